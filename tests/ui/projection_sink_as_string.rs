use evently::projection::Projection;

#[derive(Projection)]
#[projection(event = AccountEvent, sink = "PgConnection", apply(Opened))]
struct Balances;

fn main() {}
