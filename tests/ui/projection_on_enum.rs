use es::projection::Projection;

#[derive(Projection)]
#[projection(event = AccountEvent, sink = u64, handle(Opened))]
enum Balances {
    Empty,
}

fn main() {}
