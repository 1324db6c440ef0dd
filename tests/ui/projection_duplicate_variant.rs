use es::projection::Projection;

#[derive(Projection)]
#[projection(event = AccountEvent, sink = u64)]
#[projection(handle(Opened = opened, Deposited, Opened = reopened))]
struct Balances;

fn main() {}
