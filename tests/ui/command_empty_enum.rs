use evently::Command;

#[derive(Clone, Command)]
enum AccountCommand {}

fn main() {}
