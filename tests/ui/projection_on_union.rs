use evently::projection::Projection;

#[derive(Projection)]
#[projection(event = AccountEvent, sink = u64, apply(Opened))]
union Balances {
    total: u64,
}

fn main() {}
