use es::projection::Projection;

#[derive(Projection)]
#[projection(event = AccountEvent, sink = u64, handle = opened)]
struct Balances;

fn main() {}
