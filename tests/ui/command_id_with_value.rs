use es::Command;

#[derive(Clone, Command)]
struct Deposit {
    #[command(id = true)]
    account: String,
    amount: u64,
}

fn main() {}
