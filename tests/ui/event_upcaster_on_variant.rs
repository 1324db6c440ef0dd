use evently::Event;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Event)]
enum AccountEvent {
    #[event(upcaster = upcast)]
    Opened { owner: String },
}

fn upcast(_: evently::upcast::OldEvent) -> Option<Vec<evently::upcast::OldEvent>> {
    None
}

fn main() {}
