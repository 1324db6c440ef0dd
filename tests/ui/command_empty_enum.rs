use es::Command;

#[derive(Clone, Command)]
enum AccountCommand {}

fn main() {}
