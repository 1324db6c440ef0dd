use es::projection::Projection;

#[derive(Projection)]
#[projection(name = " ", event = AccountEvent, sink = u64, handle(Opened))]
struct Balances;

fn main() {}
