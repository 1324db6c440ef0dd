use evently::Event;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Event)]
#[event(version = 0)]
enum AccountEvent {
    Opened { owner: String },
}

fn main() {}
