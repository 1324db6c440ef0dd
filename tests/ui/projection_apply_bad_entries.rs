use evently::projection::Projection;

#[derive(Projection)]
#[projection(event = AccountEvent, sink = u64)]
#[projection(apply(AccountEvent::Opened, Deposited = "deposited", Opened(owner)))]
struct Balances;

fn main() {}
