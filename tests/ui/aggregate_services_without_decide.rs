use evently::{Aggregate, Command, Event};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
enum AccountEvent {
    Opened { owner: String },
}

#[derive(Debug, Clone, Command)]
enum AccountCommand {
    Open { id: String, owner: String },
}

#[derive(Debug, thiserror::Error)]
#[error("the account is already open")]
struct AlreadyOpen;

struct Rates;

#[derive(Default, Aggregate)]
#[aggregate(event = AccountEvent, command = AccountCommand, error = AlreadyOpen, services = Rates)]
struct BankAccount {
    open: bool,
}

impl BankAccount {
    fn apply(&mut self, _: &AccountEvent) {
        self.open = true;
    }
}

fn main() {}
