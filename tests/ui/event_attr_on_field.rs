use evently::Event;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Event)]
enum AccountEvent {
    Opened {
        #[event(name = "owner")]
        owner: String,
    },
}

fn main() {}
