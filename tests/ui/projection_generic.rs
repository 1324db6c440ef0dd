use es::projection::Projection;

#[derive(Projection)]
#[projection(event = AccountEvent, sink = u64, handle(Opened))]
struct Balances<T> {
    table: T,
}

fn main() {}
