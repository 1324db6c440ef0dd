use evently::Event;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Event)]
#[event(name = "account")]
enum AccountEvent {
    Opened { owner: String },
}

fn main() {}
