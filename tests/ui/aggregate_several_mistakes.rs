// Every mistake is reported in one build, not only the first.
use evently::Aggregate;

#[derive(Default, Aggregate)]
#[aggregate(event = AccountEvent, sevices = Ledger, name = "")]
struct BankAccount {
    balance: u64,
}

fn main() {}
