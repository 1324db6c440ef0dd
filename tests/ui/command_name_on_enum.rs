use evently::Command;

#[derive(Clone, Command)]
#[command(name = "account")]
enum AccountCommand {
    Open { id: String },
}

fn main() {}
