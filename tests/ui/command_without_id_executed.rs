use evently::memory::MemoryStore;
use evently::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
enum LampEvent {
    SwitchedOn,
}

#[derive(Debug, Clone, Command)]
enum LampCommand {
    On,
}

#[derive(Debug, thiserror::Error)]
#[error("never")]
struct Never;

#[derive(Default, Aggregate)]
#[aggregate(event = LampEvent, command = LampCommand, error = Never)]
struct Lamp;

impl Lamp {
    fn decide(&self, _: LampCommand) -> Result<Vec<LampEvent>, Never> {
        Ok(vec![LampEvent::SwitchedOn])
    }
    fn apply(&mut self, _: &LampEvent) {}
}

async fn run() {
    let lamps = Repository::<Lamp, _>::new(MemoryStore::new());
    // The command names no aggregate: `execute_on("hall", ..)` is the way.
    let _ = lamps.execute(LampCommand::On).await;
}

fn main() {
    let _ = run;
}
