use evently::Command;

#[derive(Clone, Command)]
enum AccountCommand {
    Open { id: String },
    CloseAll,
}

fn main() {}
