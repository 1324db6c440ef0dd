use evently::projection::Projection;

#[derive(Projection)]
#[projection(name = 3, event = AccountEvent, sink = u64, apply(Opened))]
struct Balances;

fn main() {}
