use evently::projection::Projection;

#[derive(Projection)]
#[projection(event = AccountEvent, sink = u64)]
#[projection(apply(Opened = opened, Deposited, Opened = reopened))]
struct Balances;

fn main() {}
