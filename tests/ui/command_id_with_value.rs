use evently::Command;

#[derive(Clone, Command)]
struct Deposit {
    #[command(id = true)]
    account: String,
    amount: u64,
}

fn main() {}
