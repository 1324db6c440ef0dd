use evently::Command;

#[derive(Clone, Command)]
struct Deposit<Id> {
    id: Id,
    amount: u64,
}

fn main() {}
