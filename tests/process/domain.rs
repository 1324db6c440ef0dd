//! The domain of tests/process.rs: accounts, and a transfer process
//! manager between them.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use evently::prelude::*;
use evently::process::{DeadlineChange, Dispatch, Dispatched, ProcessInput, ProcessManager};
use serde::{Deserialize, Serialize};

// ---- the accounts ----

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
pub enum AccountEvent {
    Opened,
    Deposited {
        amount: u64,
    },
    TransferDebited {
        transfer: String,
        to: String,
        amount: u64,
    },
    TransferCredited {
        transfer: String,
        amount: u64,
    },
    TransferRefunded {
        transfer: String,
        amount: u64,
    },
    Closed,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Command)]
pub enum AccountCommand {
    Open {
        id: String,
    },
    Deposit {
        id: String,
        amount: u64,
    },
    Transfer {
        id: String,
        to: String,
        amount: u64,
        transfer: String,
    },
    Credit {
        id: String,
        amount: u64,
        transfer: String,
    },
    Refund {
        id: String,
        amount: u64,
        transfer: String,
    },
    Close {
        id: String,
    },
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AccountError {
    #[error("the account is closed")]
    Closed,
    #[error("insufficient funds")]
    Insufficient,
}

#[derive(Debug, Default, Aggregate)]
#[aggregate(name = "account", event = AccountEvent, command = AccountCommand, error = AccountError)]
pub struct Account {
    pub balance: u64,
    closed: bool,
}

impl Account {
    fn decide(&self, command: AccountCommand) -> Result<Vec<AccountEvent>, AccountError> {
        use AccountCommand::*;
        if self.closed {
            return Err(AccountError::Closed);
        }
        Ok(match command {
            Open { .. } => vec![AccountEvent::Opened],
            Deposit { amount, .. } => vec![AccountEvent::Deposited { amount }],
            Transfer { amount, .. } if amount > self.balance => {
                return Err(AccountError::Insufficient)
            }
            Transfer {
                to,
                amount,
                transfer,
                ..
            } => vec![AccountEvent::TransferDebited {
                transfer,
                to,
                amount,
            }],
            Credit {
                amount, transfer, ..
            } => vec![AccountEvent::TransferCredited { transfer, amount }],
            Refund {
                amount, transfer, ..
            } => vec![AccountEvent::TransferRefunded { transfer, amount }],
            Close { .. } => vec![AccountEvent::Closed],
        })
    }

    fn apply(&mut self, event: &AccountEvent) {
        match event {
            AccountEvent::Deposited { amount }
            | AccountEvent::TransferCredited { amount, .. }
            | AccountEvent::TransferRefunded { amount, .. } => self.balance += amount,
            AccountEvent::TransferDebited { amount, .. } => self.balance -= amount,
            AccountEvent::Closed => self.closed = true,
            AccountEvent::Opened => {}
        }
    }
}

// ---- the transfer process ----

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
pub enum TransferEvent {
    TransferStarted {
        transfer: String,
        from: String,
        to: String,
        amount: u64,
    },
    TransferCompleted {
        transfer: String,
    },
    CompensationStarted {
        transfer: String,
        from: String,
        amount: u64,
        reason: String,
    },
    TransferCompensated {
        transfer: String,
    },
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub enum Stage {
    #[default]
    New,
    Crediting,
    Completed,
    Compensating,
    Compensated,
}

#[derive(Debug, thiserror::Error)]
#[error("nothing to do")]
pub struct Ignored;

#[derive(Debug, Default, PartialEq, Aggregate)]
#[aggregate(
    name = "transfer",
    event = TransferEvent,
    command = ProcessInput<AccountEvent, AccountCommand>,
    error = Ignored
)]
pub struct Transfer {
    pub stage: Stage,
    from: String,
    amount: u64,
}

impl Transfer {
    fn decide(
        &self,
        input: ProcessInput<AccountEvent, AccountCommand>,
    ) -> Result<Vec<TransferEvent>, Ignored> {
        Ok(match (&self.stage, input) {
            (Stage::New, ProcessInput::Event(e)) => {
                let from = e.aggregate_id().unwrap_or_default().to_owned();
                match e.data {
                    AccountEvent::TransferDebited {
                        transfer,
                        to,
                        amount,
                    } => vec![TransferEvent::TransferStarted {
                        transfer,
                        from,
                        to,
                        amount,
                    }],
                    _ => return Err(Ignored),
                }
            }
            (Stage::Crediting, ProcessInput::Event(e)) => match e.data {
                AccountEvent::TransferCredited { transfer, .. } => {
                    vec![TransferEvent::TransferCompleted { transfer }]
                }
                _ => return Err(Ignored),
            },
            (Stage::Crediting, ProcessInput::Refused { command, reason }) => {
                let AccountCommand::Credit { transfer, .. } = command else {
                    return Err(Ignored);
                };
                vec![self.compensate(transfer, reason)]
            }
            (Stage::Crediting, ProcessInput::Deadline { payload, .. }) => {
                let transfer = payload["transfer"].as_str().unwrap_or_default().to_owned();
                vec![self.compensate(transfer, "the credit did not come in time".into())]
            }
            (Stage::Compensating, ProcessInput::Event(e)) => match e.data {
                AccountEvent::TransferRefunded { transfer, .. } => {
                    vec![TransferEvent::TransferCompensated { transfer }]
                }
                _ => return Err(Ignored),
            },
            _ => return Err(Ignored),
        })
    }

    fn compensate(&self, transfer: String, reason: String) -> TransferEvent {
        TransferEvent::CompensationStarted {
            transfer,
            from: self.from.clone(),
            amount: self.amount,
            reason,
        }
    }

    fn apply(&mut self, event: &TransferEvent) {
        match event {
            TransferEvent::TransferStarted { from, amount, .. } => {
                self.stage = Stage::Crediting;
                self.from = from.clone();
                self.amount = *amount;
            }
            TransferEvent::TransferCompleted { .. } => self.stage = Stage::Completed,
            TransferEvent::CompensationStarted { .. } => self.stage = Stage::Compensating,
            TransferEvent::TransferCompensated { .. } => self.stage = Stage::Compensated,
        }
    }
}

impl ProcessManager for Transfer {
    type Input = AccountEvent;
    type Output = AccountCommand;

    fn route(event: &RecordedEvent<AccountEvent>) -> Option<String> {
        match &event.data {
            AccountEvent::TransferDebited { transfer, .. }
            | AccountEvent::TransferCredited { transfer, .. }
            | AccountEvent::TransferRefunded { transfer, .. } => Some(transfer.clone()),
            _ => None,
        }
    }

    fn commands(event: &TransferEvent) -> Vec<AccountCommand> {
        match event {
            TransferEvent::TransferStarted {
                transfer,
                to,
                amount,
                ..
            } => vec![AccountCommand::Credit {
                id: to.clone(),
                amount: *amount,
                transfer: transfer.clone(),
            }],
            TransferEvent::CompensationStarted {
                transfer,
                from,
                amount,
                ..
            } => vec![AccountCommand::Refund {
                id: from.clone(),
                amount: *amount,
                transfer: transfer.clone(),
            }],
            _ => vec![],
        }
    }

    fn deadlines(event: &TransferEvent) -> Vec<DeadlineChange> {
        match event {
            TransferEvent::TransferStarted { transfer, .. } => vec![DeadlineChange::Set {
                name: "credit".into(),
                after: Duration::from_secs(30),
                payload: serde_json::json!({ "transfer": transfer }),
            }],
            TransferEvent::TransferCompleted { .. } | TransferEvent::CompensationStarted { .. } => {
                vec![DeadlineChange::Cancel {
                    name: "credit".into(),
                }]
            }
            _ => vec![],
        }
    }
}

/// Sends to the accounts in this process; credits to the accounts in
/// `lost` vanish (a message lost on the way: only the deadline notices).
#[derive(Clone)]
pub struct Local<S> {
    pub accounts: Repository<Account, S>,
    pub lost: Arc<HashSet<String>>,
}

impl<S: EventStore + CommandStore> Dispatch<AccountCommand> for Local<S> {
    async fn send(
        &self,
        command: AccountCommand,
        context: CommandContext,
    ) -> Result<Dispatched, String> {
        if let AccountCommand::Credit { id, .. } = &command {
            if self.lost.contains(id) {
                return Ok(Dispatched::Done);
            }
        }
        match self.accounts.execute_with(command, context).await {
            Ok(_) => Ok(Dispatched::Done),
            Err(CommandError::Rejected(e)) => Ok(Dispatched::Refused(e.to_string())),
            Err(e) => Err(e.to_string()),
        }
    }
}
