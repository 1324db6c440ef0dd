use evently::projection::Projection;

#[derive(Projection)]
#[projection(event = AccountEvent, sink = u64, apply(Opened))]
struct Balances<T> {
    table: T,
}

fn main() {}
