use evently::projection::Projection;

#[derive(Projection)]
#[projection(event = AccountEvent, sink = u64, apply = opened)]
struct Balances;

fn main() {}
