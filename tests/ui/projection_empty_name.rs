use evently::projection::Projection;

#[derive(Projection)]
#[projection(name = " ", event = AccountEvent, sink = u64, apply(Opened))]
struct Balances;

fn main() {}
