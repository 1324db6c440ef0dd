use evently::Event;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Event)]
enum AccountEvent<T> {
    Opened { owner: T },
}

fn main() {}
