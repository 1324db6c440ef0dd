use es::projection::Projection;

#[derive(Projection)]
#[projection(event = AccountEvent, sink = u64, handle(Opened))]
#[projection(handle(Deposited))]
struct Balances;

fn main() {}
