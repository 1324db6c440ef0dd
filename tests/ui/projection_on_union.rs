use es::projection::Projection;

#[derive(Projection)]
#[projection(event = AccountEvent, sink = u64, handle(Opened))]
union Balances {
    total: u64,
}

fn main() {}
