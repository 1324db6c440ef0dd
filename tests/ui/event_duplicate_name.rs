use evently::Event;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Event)]
enum AccountEvent {
    Opened { owner: String },
    #[event(name = "Opened")]
    Reopened { owner: String },
}

fn main() {}
