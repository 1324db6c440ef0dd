use es::projection::Projection;

#[derive(Projection)]
#[projection(event = AccountEvent, sink = u64, handle(Opened), state = u64)]
struct Balances;

fn main() {}
