use evently::projection::Projection;

#[derive(Projection)]
#[projection(event = AccountEvent, sink = u64, apply(Opened))]
#[projection(apply(Deposited))]
struct Balances;

fn main() {}
