use evently::Command;

#[derive(Clone, Command)]
enum AccountCommand {
    Transfer {
        #[command(id)]
        from: String,
        #[command(id)]
        to: String,
        amount: u64,
    },
}

fn main() {}
