use es::Command;

#[derive(Clone, Command)]
#[command(name = "account")]
enum AccountCommand {
    Open { id: String },
}

fn main() {}
