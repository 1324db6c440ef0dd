use evently::Aggregate;

#[derive(Default, Aggregate)]
#[aggregate(event = AccountEvent, command = AccountCommand, error = AccountError)]
#[aggregate(event = LedgerEvent)]
struct BankAccount {
    balance: u64,
}

fn main() {}
