use evently::Aggregate;

#[derive(Default, Aggregate)]
struct BankAccount {
    balance: u64,
}

fn main() {}
