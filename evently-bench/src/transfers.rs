//! W11: transfers between accounts through a process manager on
//! PostgreSQL: the debit, the process's start, the credit it sends and
//! its completion, each a command, the process's runners following the
//! log.

use std::time::{Duration, Instant};

use evently::deadline::SystemClock;
use evently::prelude::*;
use evently::process::{run_process, DeadlineChange, ProcessInput, ProcessManager, ProcessOptions};
use serde::{Deserialize, Serialize};

use crate::report::Measurement;
use crate::support::{fresh_store, BoxError, Setup};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
enum LedgerEvent {
    Funded {
        amount: u64,
    },
    Sent {
        transfer: String,
        to: String,
        amount: u64,
    },
    Received {
        transfer: String,
        amount: u64,
    },
}

#[derive(Debug, Clone, Command)]
enum LedgerCommand {
    Fund {
        id: String,
        amount: u64,
    },
    Send {
        id: String,
        to: String,
        amount: u64,
        transfer: String,
    },
    Receive {
        id: String,
        amount: u64,
        transfer: String,
    },
}

#[derive(Debug, thiserror::Error)]
#[error("insufficient funds")]
struct Insufficient;

#[derive(Debug, Default, Aggregate)]
#[aggregate(name = "ledger", event = LedgerEvent, command = LedgerCommand, error = Insufficient)]
struct Ledger {
    balance: u64,
}

impl Ledger {
    fn decide(&self, command: LedgerCommand) -> Result<Vec<LedgerEvent>, Insufficient> {
        Ok(vec![match command {
            LedgerCommand::Fund { amount, .. } => LedgerEvent::Funded { amount },
            LedgerCommand::Send { amount, .. } if amount > self.balance => {
                return Err(Insufficient)
            }
            LedgerCommand::Send {
                to,
                amount,
                transfer,
                ..
            } => LedgerEvent::Sent {
                transfer,
                to,
                amount,
            },
            LedgerCommand::Receive {
                amount, transfer, ..
            } => LedgerEvent::Received { transfer, amount },
        }])
    }

    fn apply(&mut self, event: &LedgerEvent) {
        match event {
            LedgerEvent::Funded { amount } | LedgerEvent::Received { amount, .. } => {
                self.balance += amount
            }
            LedgerEvent::Sent { amount, .. } => self.balance -= amount,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
enum MoveEvent {
    MoveStarted {
        transfer: String,
        to: String,
        amount: u64,
    },
    MoveDone,
}

#[derive(Debug, thiserror::Error)]
#[error("nothing to do")]
struct Nothing;

#[derive(Debug, Default, Aggregate)]
#[aggregate(name = "move", event = MoveEvent, command = ProcessInput<LedgerEvent, LedgerCommand>, error = Nothing)]
struct Move {
    started: bool,
    done: bool,
}

impl Move {
    fn decide(
        &self,
        input: ProcessInput<LedgerEvent, LedgerCommand>,
    ) -> Result<Vec<MoveEvent>, Nothing> {
        let ProcessInput::Event(event) = input else {
            return Err(Nothing);
        };
        match event.data {
            LedgerEvent::Sent {
                transfer,
                to,
                amount,
            } if !self.started => Ok(vec![MoveEvent::MoveStarted {
                transfer,
                to,
                amount,
            }]),
            LedgerEvent::Received { .. } if self.started && !self.done => {
                Ok(vec![MoveEvent::MoveDone])
            }
            _ => Err(Nothing),
        }
    }

    fn apply(&mut self, event: &MoveEvent) {
        match event {
            MoveEvent::MoveStarted { .. } => self.started = true,
            MoveEvent::MoveDone => self.done = true,
        }
    }
}

impl ProcessManager for Move {
    type Input = LedgerEvent;
    type Output = LedgerCommand;

    fn route(event: &RecordedEvent<LedgerEvent>) -> Option<String> {
        match &event.data {
            LedgerEvent::Sent { transfer, .. } | LedgerEvent::Received { transfer, .. } => {
                Some(transfer.clone())
            }
            LedgerEvent::Funded { .. } => None,
        }
    }

    fn commands(event: &MoveEvent) -> Vec<LedgerCommand> {
        match event {
            MoveEvent::MoveStarted {
                transfer,
                to,
                amount,
            } => vec![LedgerCommand::Receive {
                id: to.clone(),
                amount: *amount,
                transfer: transfer.clone(),
            }],
            MoveEvent::MoveDone => vec![],
        }
    }

    fn deadlines(event: &MoveEvent) -> Vec<DeadlineChange> {
        let name = "receive".to_owned();
        match event {
            MoveEvent::MoveStarted { .. } => vec![DeadlineChange::Set {
                name,
                after: Duration::from_secs(3_600),
                payload: serde_json::Value::Null,
            }],
            MoveEvent::MoveDone => vec![DeadlineChange::Cancel { name }],
        }
    }
}

/// W11: `transfers` transfers among 20 accounts from 16 tasks; timed from
/// the first debit to the last process completed; transfers/s.
pub async fn w11(url: &str, transfers: usize, setup: Setup) -> Result<Measurement, BoxError> {
    let store = fresh_store(url, "es_bench_w11", 16, setup).await?;
    let ledgers = Repository::<Ledger, _>::new(store.clone());
    for n in 0..20 {
        ledgers
            .execute(LedgerCommand::Fund {
                id: format!("l{n}"),
                amount: 1_000_000,
            })
            .await?;
    }
    let moves = Repository::<Move, _>::new(store.clone());
    let started = Instant::now();
    let running = run_process(
        moves,
        store.clone(),
        ledgers.clone(),
        SystemClock,
        ProcessOptions::default(),
    );
    let tasks: Vec<_> = (0..16)
        .map(|t| {
            let ledgers = ledgers.clone();
            tokio::spawn(async move {
                for n in (t..transfers).step_by(16) {
                    let command = LedgerCommand::Send {
                        id: format!("l{}", n % 20),
                        to: format!("l{}", (n + 1 + n % 19) % 20),
                        amount: 1,
                        transfer: format!("m{n}"),
                    };
                    ledgers.execute(command).await.map_err(|e| e.to_string())?;
                }
                Ok::<_, String>(())
            })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    // Done when both runners have caught up with a head that no longer
    // moves: every process started, credited and completed.
    loop {
        let head = store.head_position().await?;
        running
            .reactor
            .wait_for(head, Duration::from_secs(600))
            .await?;
        running
            .sender
            .wait_for(head, Duration::from_secs(600))
            .await?;
        if store.head_position().await? == head {
            break;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    running.stop().await;
    let completed = store
        .read_all(1, usize::MAX)
        .await?
        .iter()
        .filter(|e| &*e.event_type == "MoveDone")
        .count();
    store.pool().close().await;
    if completed != transfers {
        return Err(format!("W11: {completed} of {transfers} transfers completed").into());
    }
    Ok(Measurement::new(
        "W11",
        "postgres",
        transfers as u64,
        seconds,
    ))
}
