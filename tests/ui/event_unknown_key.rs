use evently::Event;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Event)]
enum AccountEvent {
    #[event(nmae = "account.opened")]
    Opened { owner: String },
}

fn main() {}
