use es::Event;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Event)]
enum AccountEvent {
    #[event(upcaster = upcast)]
    Opened { owner: String },
}

fn upcast(_: es::upcast::OldEvent) -> Option<Vec<es::upcast::OldEvent>> {
    None
}

fn main() {}
