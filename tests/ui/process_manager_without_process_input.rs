// A process manager decides on `ProcessInput`s (the events it follows, refusals,
// deadlines): an aggregate with commands of its own is not one.
use evently::prelude::*;
use evently::process::ProcessManager;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
enum TransferEvent {
    Started { amount: u64 },
}

#[derive(Debug, Clone, Command)]
enum TransferCommand {
    Start { id: String, amount: u64 },
}

#[derive(Debug, thiserror::Error)]
#[error("no")]
struct No;

#[derive(Debug, Default, Aggregate)]
#[aggregate(event = TransferEvent, command = TransferCommand, error = No)]
struct Transfer;

impl Transfer {
    fn decide(&self, command: TransferCommand) -> Result<Vec<TransferEvent>, No> {
        let TransferCommand::Start { amount, .. } = command;
        Ok(vec![TransferEvent::Started { amount }])
    }

    fn apply(&mut self, _: &TransferEvent) {}
}

impl ProcessManager for Transfer {
    type Input = TransferEvent;
    type Output = TransferCommand;

    fn route(_: &RecordedEvent<TransferEvent>) -> Option<String> {
        None
    }
}

fn main() {}
