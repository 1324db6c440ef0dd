use evently::Command;

#[derive(Clone, Command)]
enum AccountCommand {
    Open { id: String, owner: String },
    Deposit { account: String, amount: u64 },
}

fn main() {}
