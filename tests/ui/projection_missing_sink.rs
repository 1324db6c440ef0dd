use es::projection::Projection;

#[derive(Projection)]
#[projection(event = AccountEvent, handle(Opened, Deposited))]
struct Balances;

fn main() {}
