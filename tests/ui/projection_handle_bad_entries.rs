use es::projection::Projection;

#[derive(Projection)]
#[projection(event = AccountEvent, sink = u64)]
#[projection(handle(AccountEvent::Opened, Deposited = "deposited", Opened(owner)))]
struct Balances;

fn main() {}
