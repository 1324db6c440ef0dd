use es::Command;

#[derive(Clone, Command)]
struct CloseAccount(String, String);

fn main() {}
