use evently::Event;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Event)]
enum AccountEvent {
    #[event(name = "Closed")]
    Opened { owner: String },
    Closed,
}

fn main() {}
