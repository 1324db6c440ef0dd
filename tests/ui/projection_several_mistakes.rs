use evently::projection::Projection;

// Every mistake is reported in one build, not only the first.
#[derive(Projection)]
#[projection(name = 3, event = AccountEvent, table = "balances")]
#[projection(apply(Opened, Deposited, Opened))]
struct Balances;

fn main() {}
