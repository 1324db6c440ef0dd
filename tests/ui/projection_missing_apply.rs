use evently::projection::Projection;

#[derive(Projection)]
#[projection(event = AccountEvent, sink = u64)]
struct Balances;

fn main() {}
