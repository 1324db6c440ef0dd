use evently::Command;

#[derive(Clone, Command)]
enum AccountCommand {
    Deposit {
        #[command(aggregate_id)]
        account: String,
        amount: u64,
    },
}

fn main() {}
