use evently::Command;

#[derive(Clone)]
struct AccountId(u64);

#[derive(Clone, Command)]
enum AccountCommand {
    Deposit { id: AccountId, amount: u64 },
}

fn main() {}
