use evently::Aggregate;

#[derive(Default, Aggregate)]
#[aggregate(event = AccountEvent, command = AccountCommand, error = AccountError, state = u64)]
struct BankAccount {
    balance: u64,
}

fn main() {}
