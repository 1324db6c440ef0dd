use es::projection::Projection;

#[derive(Projection)]
#[projection(sink = u64, handle(Opened, Deposited))]
struct Balances;

fn main() {}
