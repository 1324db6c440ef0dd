use evently::projection::Projection;

#[derive(Projection)]
#[projection(event = AccountEvent, apply(Opened, Deposited))]
struct Balances;

fn main() {}
