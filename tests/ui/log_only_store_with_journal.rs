use evently::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
enum TallyEvent {
    Added { n: u32 },
}

#[derive(Debug, Clone, Serialize, Command)]
enum TallyCommand {
    Add { id: String, n: u32 },
}

#[derive(Debug, thiserror::Error)]
#[error("never")]
struct Never;

#[derive(Default, Aggregate)]
#[aggregate(event = TallyEvent, command = TallyCommand, error = Never)]
struct Tally;

impl Tally {
    fn decide(&self, _: TallyCommand) -> Result<Vec<TallyEvent>, Never> {
        Ok(vec![])
    }
    fn apply(&mut self, _: &TallyEvent) {}
}

// A store whose type implements only the core log: a journal needs a
// `CommandStore`, and the compiler says so.
fn journal<S: EventStore>(store: S) {
    let _ = Repository::<Tally, _>::log_only(store).with_journal(Journal::Accepted);
}

fn main() {
    let _ = journal::<evently::memory::MemoryStore>;
}
