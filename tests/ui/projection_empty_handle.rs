use es::projection::Projection;

#[derive(Projection)]
#[projection(event = AccountEvent, sink = u64, handle())]
struct Balances;

fn main() {}
