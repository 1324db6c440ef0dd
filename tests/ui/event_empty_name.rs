use evently::Event;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Event)]
#[event(name = "")]
struct AccountOpened {
    owner: String,
}

fn main() {}
