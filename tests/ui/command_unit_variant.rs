use es::Command;

#[derive(Clone, Command)]
enum AccountCommand {
    Open { id: String },
    CloseAll,
}

fn main() {}
