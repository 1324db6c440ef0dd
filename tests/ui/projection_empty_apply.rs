use evently::projection::Projection;

#[derive(Projection)]
#[projection(event = AccountEvent, sink = u64, apply())]
struct Balances;

fn main() {}
