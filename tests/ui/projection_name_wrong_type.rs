use es::projection::Projection;

#[derive(Projection)]
#[projection(name = 3, event = AccountEvent, sink = u64, handle(Opened))]
struct Balances;

fn main() {}
