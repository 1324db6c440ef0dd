use es::projection::Projection;

#[derive(Projection)]
struct Balances;

fn main() {}
