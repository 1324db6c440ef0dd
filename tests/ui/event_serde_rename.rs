use evently::Event;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Event)]
enum AccountEvent {
    #[serde(rename = "account.opened")]
    Opened { owner: String },
}

fn main() {}
