use es::projection::Projection;

#[derive(Projection)]
#[projection(event = AccountEvent, sink = "PgConnection", handle(Opened))]
struct Balances;

fn main() {}
