use evently::Aggregate;

#[derive(Default, Aggregate)]
#[aggregate(event = AccountEvent, command = AccountCommand, error = AccountError)]
enum BankAccount {
    #[default]
    Closed,
    Open { balance: u64 },
}

fn main() {}
