// Every mistake is reported in one build, not only the first.
use evently::Event;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Event)]
#[event(version = 0)]
enum AccountEvent {
    #[event(name = "opened", verison = 2)]
    Opened { owner: String },
    #[serde(alias = "Deposit")]
    Deposited { amount: u64 },
    #[event(name = "opened")]
    Reopened,
}

fn main() {}
