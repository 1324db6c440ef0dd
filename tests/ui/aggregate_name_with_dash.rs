use evently::Aggregate;

// A `-` in the type would make `"{type}-{id}"` stream ids ambiguous.
#[derive(Default, Aggregate)]
#[aggregate(name = "bank-account", event = AccountEvent, command = AccountCommand, error = AccountError)]
struct BankAccount {
    balance: u64,
}

fn main() {}
