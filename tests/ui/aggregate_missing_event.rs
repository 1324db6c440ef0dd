use evently::Aggregate;

#[derive(Default, Aggregate)]
#[aggregate(command = AccountCommand, error = AccountError)]
struct BankAccount {
    balance: u64,
}

fn main() {}
