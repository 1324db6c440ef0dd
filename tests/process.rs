//! A process manager on both stores: transfers between accounts that
//! complete, that are compensated when the credit is refused, and that are
//! compensated when the credit never comes and the deadline fires.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use evently::deadline::{DeadlineStore, ManualClock};
use evently::prelude::*;
use evently::process::{
    run_process, DeadlineChange, Dispatch, Dispatched, ProcessInput, ProcessManager, ProcessOptions,
};
use evently::ProjectionStore;
use serde::{Deserialize, Serialize};

#[macro_use]
mod common;

// ---- the accounts ----

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
enum AccountEvent {
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
enum AccountCommand {
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
enum AccountError {
    #[error("the account is closed")]
    Closed,
    #[error("insufficient funds")]
    Insufficient,
}

#[derive(Debug, Default, Aggregate)]
#[aggregate(name = "account", event = AccountEvent, command = AccountCommand, error = AccountError)]
struct Account {
    balance: u64,
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
enum TransferEvent {
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
enum Stage {
    #[default]
    New,
    Crediting,
    Completed,
    Compensating,
    Compensated,
}

#[derive(Debug, thiserror::Error)]
#[error("nothing to do")]
struct Ignored;

#[derive(Debug, Default, Aggregate)]
#[aggregate(
    name = "transfer",
    event = TransferEvent,
    command = ProcessInput<AccountEvent, AccountCommand>,
    error = Ignored
)]
struct Transfer {
    stage: Stage,
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
struct Local<S> {
    accounts: Repository<Account, S>,
    lost: Arc<HashSet<String>>,
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

async fn stage_of<S: EventStore + CommandStore>(
    transfers: &Repository<Transfer, S>,
    id: &str,
    wanted: Stage,
) -> Stage {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let stage = transfers.load(id).await.unwrap().state.stage.clone();
        if stage == wanted || std::time::Instant::now() > deadline {
            return stage;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn transfers_complete_or_are_compensated_by_refusal_or_deadline<S>(store: S)
where
    S: EventStore + CommandStore + ProjectionStore + DeadlineStore,
{
    let accounts = Repository::<Account, _>::new(store.clone());
    for id in ["a", "b", "c", "d"] {
        accounts
            .execute(AccountCommand::Open { id: id.into() })
            .await
            .unwrap();
    }
    accounts
        .execute(AccountCommand::Deposit {
            id: "a".into(),
            amount: 100,
        })
        .await
        .unwrap();
    accounts
        .execute(AccountCommand::Close { id: "c".into() })
        .await
        .unwrap();
    let transfers = Repository::<Transfer, _>::new(store.clone());
    let clock = ManualClock::new(chrono::Utc::now());
    let dispatch = Local {
        accounts: accounts.clone(),
        lost: Arc::new(HashSet::from(["d".to_owned()])),
    };
    let running = run_process(
        transfers.clone(),
        store.clone(),
        dispatch,
        clock.clone(),
        ProcessOptions::default(),
    );
    for (transfer, to, amount) in [("t1", "b", 10), ("t2", "c", 20), ("t3", "d", 30)] {
        accounts
            .execute(AccountCommand::Transfer {
                id: "a".into(),
                to: to.into(),
                amount,
                transfer: transfer.into(),
            })
            .await
            .unwrap();
    }
    assert_eq!(
        stage_of(&transfers, "t1", Stage::Completed).await,
        Stage::Completed
    );
    assert_eq!(
        stage_of(&transfers, "t2", Stage::Compensated).await,
        Stage::Compensated
    );
    // t3's credit was lost: it waits for its deadline.
    assert_eq!(
        stage_of(&transfers, "t3", Stage::Crediting).await,
        Stage::Crediting
    );
    let waiting = store.pending("transfer-t3").await.unwrap();
    assert_eq!(waiting.len(), 1);
    assert_eq!(waiting[0].name, "credit");
    // t1's completion cancels its deadline (once the sender has it).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !store.pending("transfer-t1").await.unwrap().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "t1's deadline is not cancelled"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    clock.advance(Duration::from_secs(31));
    assert_eq!(
        stage_of(&transfers, "t3", Stage::Compensated).await,
        Stage::Compensated
    );
    running.stop().await;

    // The money: a paid 10 to b, and got 20 and 30 back.
    let balance = |id: &'static str| {
        let accounts = accounts.clone();
        async move { accounts.load(id).await.unwrap().state.balance }
    };
    assert_eq!(
        (
            balance("a").await,
            balance("b").await,
            balance("c").await,
            balance("d").await
        ),
        (90, 10, 0, 0)
    );
    // Nothing ran twice: a's stream is its opening, deposit, three debits
    // and two refunds.
    let a = store
        .read_stream(&StreamId::new("account-a"), 1, 100)
        .await
        .unwrap();
    let types: Vec<&str> = a.iter().map(|e| &*e.event_type).collect();
    assert_eq!(
        types,
        [
            "Opened",
            "Deposited",
            "TransferDebited",
            "TransferDebited",
            "TransferDebited",
            "TransferRefunded",
            "TransferRefunded"
        ]
    );
    // The transfer's history links each step to its cause.
    let t2 = store
        .read_stream(&StreamId::new("transfer-t2"), 1, 100)
        .await
        .unwrap();
    let steps: Vec<&str> = t2.iter().map(|e| &*e.event_type).collect();
    assert_eq!(
        steps,
        [
            "TransferStarted",
            "CompensationStarted",
            "TransferCompensated"
        ]
    );
    let of_t2 = |e: &&RecordedEvent| e.data.as_str().contains("\"t2\"");
    let debit = a
        .iter()
        .filter(of_t2)
        .find(|e| &*e.event_type == "TransferDebited")
        .unwrap();
    let refund = a
        .iter()
        .filter(of_t2)
        .find(|e| &*e.event_type == "TransferRefunded")
        .unwrap();
    // One business transaction: the debit's correlation id throughout.
    for step in t2.iter().chain([refund]) {
        assert_eq!(step.metadata.correlation_id, debit.metadata.correlation_id);
    }
    // Caused by: the debit started it; the compensation's refund was
    // caused by the process's CompensationStarted event.
    assert_eq!(t2[0].metadata.causation_id, Some(debit.event_id));
    assert_eq!(refund.metadata.causation_id, Some(t2[1].event_id));
    assert_eq!(t2[2].metadata.causation_id, Some(refund.event_id));
    // Running it again changes nothing: every reaction is already recorded.
    let again = run_process(
        transfers.clone(),
        store.clone(),
        Local {
            accounts: accounts.clone(),
            lost: Arc::new(HashSet::new()),
        },
        clock.clone(),
        ProcessOptions::default(),
    );
    let head = store.head_position().await.unwrap();
    let wait = Duration::from_secs(10);
    again.reactor.wait_for(head, wait).await.unwrap();
    again.sender.wait_for(head, wait).await.unwrap();
    again.stop().await;
    assert_eq!(store.head_position().await.unwrap(), head);
}

on_both_stores!(transfers_complete_or_are_compensated_by_refusal_or_deadline);
