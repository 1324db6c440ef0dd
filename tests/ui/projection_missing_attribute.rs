use evently::projection::Projection;

#[derive(Projection)]
struct Balances;

fn main() {}
