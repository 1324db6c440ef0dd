use evently::projection::Projection;

#[derive(Projection)]
#[projection(sink = u64, apply(Opened, Deposited))]
struct Balances;

fn main() {}
