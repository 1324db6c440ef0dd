use evently::projection::Projection;

#[derive(Projection)]
#[projection(event = AccountEvent, sink = u64, apply(Opened))]
enum Balances {
    Empty,
}

fn main() {}
