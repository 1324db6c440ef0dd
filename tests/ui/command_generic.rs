use es::Command;

#[derive(Clone, Command)]
struct Deposit<Id> {
    id: Id,
    amount: u64,
}

fn main() {}
