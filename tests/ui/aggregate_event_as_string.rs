use evently::Aggregate;

#[derive(Default, Aggregate)]
#[aggregate(event = "AccountEvent", command = AccountCommand, error = AccountError)]
struct BankAccount {
    balance: u64,
}

fn main() {}
