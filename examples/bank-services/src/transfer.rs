//! Transfers between accounts: a process manager, one instance per
//! transfer id, run by the accounts service. It credits the target; when
//! the target refuses (an account never opened) or the credit does not
//! come within 30 s, it returns the money to the source.

use std::time::Duration;

use evently::prelude::*;
use evently::process::{DeadlineChange, ProcessInput, ProcessManager};
use serde::{Deserialize, Serialize};

use crate::domain::{AccountCommand, AccountEvent};

/// What happened to a transfer: the process manager's own events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
pub enum TransferEvent {
    Started {
        transfer: String,
        from: String,
        to: String,
        amount: u64,
    },
    Completed {
        transfer: String,
    },
    Failed {
        transfer: String,
        from: String,
        amount: u64,
        reason: String,
    },
    Reversed {
        transfer: String,
    },
}

/// Why a transfer declines an input (not its step, or too late).
#[derive(Debug, PartialEq, thiserror::Error)]
#[error("not a step of this transfer")]
pub struct NotAStep;

/// A transfer between two accounts, one instance per transfer id.
#[derive(Debug, Default, PartialEq, Aggregate)]
#[aggregate(name = "transfer", event = TransferEvent, command = ProcessInput<AccountEvent, AccountCommand>, error = NotAStep)]
pub struct Transfer {
    /// The source account.
    pub from: String,
    /// The amount, in cents.
    pub amount: u64,
    pub stage: Stage,
}

/// Where a transfer stands.
#[derive(Debug, Default, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Stage {
    #[default]
    New,
    Crediting,
    Completed,
    Reversing,
    Reversed,
}

impl Transfer {
    fn decide(
        &self,
        input: ProcessInput<AccountEvent, AccountCommand>,
    ) -> Result<Vec<TransferEvent>, NotAStep> {
        let fail = |transfer: String, reason: String| TransferEvent::Failed {
            transfer,
            from: self.from.clone(),
            amount: self.amount,
            reason,
        };
        Ok(vec![match (self.stage, input) {
            (Stage::New, ProcessInput::Event(e)) => {
                let from = e.aggregate_id().unwrap_or_default().to_owned();
                let AccountEvent::TransferSent {
                    transfer,
                    to,
                    amount,
                } = e.data
                else {
                    return Err(NotAStep);
                };
                TransferEvent::Started {
                    transfer,
                    from,
                    to,
                    amount,
                }
            }
            (Stage::Crediting, ProcessInput::Event(e)) => match e.data {
                AccountEvent::TransferReceived { transfer, .. } => {
                    TransferEvent::Completed { transfer }
                }
                _ => return Err(NotAStep),
            },
            (
                Stage::Crediting,
                ProcessInput::Refused {
                    command: AccountCommand::Receive { transfer, .. },
                    reason,
                },
            ) => fail(transfer, reason),
            (Stage::Crediting, ProcessInput::Deadline { payload, .. }) => fail(
                payload["transfer"].as_str().unwrap_or_default().to_owned(),
                "the credit did not come within 30 s".into(),
            ),
            (Stage::Reversing, ProcessInput::Event(e)) => match e.data {
                AccountEvent::TransferReturned { transfer, .. } => {
                    TransferEvent::Reversed { transfer }
                }
                _ => return Err(NotAStep),
            },
            _ => return Err(NotAStep),
        }])
    }

    fn apply(&mut self, event: &TransferEvent) {
        self.stage = match event {
            TransferEvent::Started { from, amount, .. } => {
                self.from = from.clone();
                self.amount = *amount;
                Stage::Crediting
            }
            TransferEvent::Completed { .. } => Stage::Completed,
            TransferEvent::Failed { .. } => Stage::Reversing,
            TransferEvent::Reversed { .. } => Stage::Reversed,
        };
    }
}

impl ProcessManager for Transfer {
    type Input = AccountEvent;
    type Output = AccountCommand;

    /// The transfer an account's event belongs to.
    fn route(event: &RecordedEvent<AccountEvent>) -> Option<String> {
        match &event.data {
            AccountEvent::TransferSent { transfer, .. }
            | AccountEvent::TransferReceived { transfer, .. }
            | AccountEvent::TransferReturned { transfer, .. } => Some(transfer.clone()),
            _ => None,
        }
    }

    /// Started: credit the target. Failed: return the money to the source.
    fn commands(event: &TransferEvent) -> Vec<AccountCommand> {
        match event {
            TransferEvent::Started {
                transfer,
                to,
                amount,
                ..
            } => vec![AccountCommand::Receive {
                id: to.clone(),
                amount: *amount,
                transfer: transfer.clone(),
            }],
            TransferEvent::Failed {
                transfer,
                from,
                amount,
                ..
            } => vec![AccountCommand::Return {
                id: from.clone(),
                amount: *amount,
                transfer: transfer.clone(),
            }],
            _ => vec![],
        }
    }

    /// The credit has 30 s; completing or failing makes the deadline moot.
    fn deadlines(event: &TransferEvent) -> Vec<DeadlineChange> {
        let name = "credit".to_owned();
        match event {
            TransferEvent::Started { transfer, .. } => vec![DeadlineChange::Set {
                name,
                after: Duration::from_secs(30),
                payload: serde_json::json!({ "transfer": transfer }),
            }],
            TransferEvent::Completed { .. } | TransferEvent::Failed { .. } => {
                vec![DeadlineChange::Cancel { name }]
            }
            TransferEvent::Reversed { .. } => vec![],
        }
    }
}
