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
#[error("refused")]
struct Refused;

#[derive(Default, Aggregate)]
#[aggregate(event = AccountEvent, command = AccountCommand, error = Refused)]
struct Account;

impl Account {
    fn decide(&self, _: AccountCommand) -> Result<Vec<AccountEvent>, Refused> {
        Ok(vec![])
    }
    fn apply(&mut self, _: &AccountEvent) {}
}

// A second aggregate claiming the same event type: projections could not
// tell whose `Opened` an event is. Refused unless it says `shares_event`.
#[derive(Default, Aggregate)]
#[aggregate(event = AccountEvent, command = AccountCommand, error = Refused)]
struct Loan;

impl Loan {
    fn decide(&self, _: AccountCommand) -> Result<Vec<AccountEvent>, Refused> {
        Ok(vec![])
    }
    fn apply(&mut self, _: &AccountEvent) {}
}

fn main() {}
