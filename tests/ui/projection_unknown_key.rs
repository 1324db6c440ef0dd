use evently::projection::Projection;

#[derive(Projection)]
#[projection(event = AccountEvent, sink = u64, apply(Opened), state = u64)]
struct Balances;

fn main() {}
