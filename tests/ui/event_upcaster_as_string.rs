use evently::Event;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Event)]
#[event(upcaster = "upcast")]
enum AccountEvent {
    Opened { owner: String },
}

fn main() {}
