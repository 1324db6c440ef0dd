use evently::Aggregate;

#[derive(Default, Aggregate)]
#[aggregate(event = AccountEvent, command = AccountCommand, error = AccountError)]
struct BankAccount<Balance> {
    balance: Balance,
}

fn main() {}
