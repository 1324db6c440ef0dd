//! A process manager on both stores: transfers between accounts that
//! complete, that are compensated when the credit is refused, and that are
//! compensated when the credit never comes and the deadline fires.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use evently::deadline::{DeadlineStore, ManualClock};
use evently::prelude::*;
use evently::process::{process_status, run_process, DeadlineChange, ProcessInput, ProcessOptions};
use evently::ProjectionStore;

#[macro_use]
mod common;
#[path = "process/domain.rs"]
mod domain;

use domain::*;

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
    // The sender sets the deadline after the stage shows: let it catch up.
    let head = store.head_position().await.unwrap();
    running
        .sender
        .wait_for(head, Duration::from_secs(10))
        .await
        .unwrap();
    let status = process_status(&transfers, "t3").await.unwrap();
    assert_eq!((status.state.stage, status.version), (Stage::Crediting, 1));
    assert_eq!(status.waiting.len(), 1);
    assert_eq!(status.waiting[0].name, "credit");
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
    // The refund is sent after the stage shows it: let the sender catch up.
    let head = store.head_position().await.unwrap();
    running
        .sender
        .wait_for(head, Duration::from_secs(10))
        .await
        .unwrap();
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

/// The process alone, given/when/then: what it decides, which commands
/// that sends and which deadlines it sets or cancels.
#[test]
fn a_transfer_decides_each_step_given_when_then() {
    use evently::testing::{given, recorded};
    let started = TransferEvent::TransferStarted {
        transfer: "t".into(),
        from: "a".into(),
        to: "b".into(),
        amount: 5,
    };
    let debited = AccountEvent::TransferDebited {
        transfer: "t".into(),
        to: "b".into(),
        amount: 5,
    };
    given::<Transfer>([])
        .when(ProcessInput::Event(recorded("account-a", 2, debited)))
        .then_expect_commands([AccountCommand::Credit {
            id: "b".into(),
            amount: 5,
            transfer: "t".into(),
        }])
        .then_expect_deadlines([DeadlineChange::Set {
            name: "credit".into(),
            after: Duration::from_secs(30),
            payload: serde_json::json!({ "transfer": "t" }),
        }])
        .then_expect_events([started.clone()]);
    // No credit in time: refund, and the deadline is done.
    given::<Transfer>([started.clone()])
        .when(ProcessInput::Deadline {
            name: "credit".into(),
            payload: serde_json::json!({ "transfer": "t" }),
        })
        .then_expect_commands([AccountCommand::Refund {
            id: "a".into(),
            amount: 5,
            transfer: "t".into(),
        }])
        .then_expect_deadlines([DeadlineChange::Cancel {
            name: "credit".into(),
        }])
        .then_expect_events([TransferEvent::CompensationStarted {
            transfer: "t".into(),
            from: "a".into(),
            amount: 5,
            reason: "the credit did not come in time".into(),
        }]);
    // A completed transfer declines a late deadline.
    given::<Transfer>([
        started,
        TransferEvent::TransferCompleted {
            transfer: "t".into(),
        },
    ])
    .when(ProcessInput::Deadline {
        name: "credit".into(),
        payload: serde_json::json!({ "transfer": "t" }),
    })
    .then_expect_error_matching(|_: &Ignored| true);
}

/// 1,000 transfers among 20 accounts from 16 tasks, three target accounts
/// closed mid-run, and the process's runners killed (aborted) 25 times
/// along the way: the money is all there, every transfer that started is
/// completed or compensated, and no credit or refund happened twice.
async fn a_thousand_transfers_survive_closed_accounts_and_killed_runners<S>(store: S)
where
    S: EventStore + CommandStore + ProjectionStore + DeadlineStore,
{
    const ACCOUNTS: usize = 20;
    const TRANSFERS: usize = 1_000;
    let accounts = Repository::<Account, _>::new(store.clone());
    for n in 0..ACCOUNTS {
        accounts
            .execute(AccountCommand::Open {
                id: format!("a{n}"),
            })
            .await
            .unwrap();
        accounts
            .execute(AccountCommand::Deposit {
                id: format!("a{n}"),
                amount: 10_000,
            })
            .await
            .unwrap();
    }
    let transfers = Repository::<Transfer, _>::new(store.clone());
    let clock = ManualClock::new(chrono::Utc::now());
    let start = || {
        run_process(
            transfers.clone(),
            store.clone(),
            Local {
                accounts: accounts.clone(),
                lost: Arc::new(HashSet::new()),
            },
            clock.clone(),
            ProcessOptions::default(),
        )
    };
    let sent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    // Sources are a0..a15; a16..a19 only receive, and three of them close.
    let tasks: Vec<_> = (0..16)
        .map(|t| {
            let (accounts, sent) = (accounts.clone(), Arc::clone(&sent));
            tokio::spawn(async move {
                let mut started = Vec::new();
                for n in (t..TRANSFERS).step_by(16) {
                    let from = format!("a{}", n % 16);
                    let to = format!("a{}", (n % 16 + 1 + (n * 7) % 19) % ACCOUNTS);
                    let transfer = format!("x{n}");
                    let command = AccountCommand::Transfer {
                        id: from,
                        to,
                        amount: 1 + (n as u64 * 13) % 50,
                        transfer: transfer.clone(),
                    };
                    match accounts.execute(command).await {
                        Ok(_) => started.push(transfer),
                        Err(CommandError::Rejected(AccountError::Insufficient)) => {}
                        Err(e) => panic!("{e}"),
                    }
                    sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                started
            })
        })
        .collect();
    let mut running = start();
    let mut kills = 0;
    let mut closed = false;
    loop {
        let done = sent.load(std::sync::atomic::Ordering::Relaxed);
        if !closed && done >= TRANSFERS / 3 {
            for id in ["a17", "a18", "a19"] {
                accounts
                    .execute(AccountCommand::Close { id: id.into() })
                    .await
                    .unwrap();
            }
            closed = true;
        }
        if kills >= 25 && tasks.iter().all(|t| t.is_finished()) {
            break;
        }
        // Let the runners work a little, then kill them mid-way.
        tokio::time::sleep(Duration::from_millis(if kills < 25 { 15 } else { 50 })).await;
        if kills < 25 {
            running.abort();
            running = start();
            kills += 1;
        }
    }
    let mut started = Vec::new();
    for task in tasks {
        started.extend(task.await.unwrap());
    }
    assert_eq!(started.len(), TRANSFERS, "every debit went through");
    // Every started transfer ends, completed or compensated.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let mut outcomes = std::collections::BTreeMap::new();
    for transfer in &started {
        let stage = loop {
            let stage = transfers.load(transfer).await.unwrap().state.stage.clone();
            if matches!(stage, Stage::Completed | Stage::Compensated) {
                break stage;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{transfer} stuck at {stage:?} (reactor {:?}, sender {:?})",
                running.reactor.status(),
                running.sender.status()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        *outcomes.entry(format!("{stage:?}")).or_insert(0) += 1;
    }
    // The sender handles each end (cancelling its deadline) just after the
    // stage shows it: let it catch up before stopping.
    let head = store.head_position().await.unwrap();
    running
        .sender
        .wait_for(head, Duration::from_secs(60))
        .await
        .unwrap();
    running.stop().await;
    assert!(
        outcomes.get("Compensated").copied().unwrap_or(0) > 0,
        "{outcomes:?}"
    );
    assert!(
        outcomes.get("Completed").copied().unwrap_or(0) > 0,
        "{outcomes:?}"
    );
    // The money is all there.
    let mut total = 0;
    let mut credits: std::collections::HashMap<String, u32> = Default::default();
    let mut refunds: std::collections::HashMap<String, u32> = Default::default();
    for n in 0..ACCOUNTS {
        let id = format!("a{n}");
        total += accounts.load(&id).await.unwrap().state.balance;
        let events = store
            .read_stream(&StreamId::new(format!("account-{id}")), 1, 100_000)
            .await
            .unwrap();
        for event in events {
            let data: AccountEvent = serde_json::from_str(&format!(
                "{{\"{}\":{}}}",
                event.event_type,
                event.data.as_str()
            ))
            .unwrap_or(AccountEvent::Opened);
            match data {
                AccountEvent::TransferCredited { transfer, .. } => {
                    *credits.entry(transfer).or_default() += 1
                }
                AccountEvent::TransferRefunded { transfer, .. } => {
                    *refunds.entry(transfer).or_default() += 1
                }
                _ => {}
            }
        }
    }
    assert_eq!(total, 10_000 * ACCOUNTS as u64, "money made or lost");
    // No command ran twice, and each transfer ended one way.
    for transfer in &started {
        let (c, r) = (
            credits.get(transfer).copied().unwrap_or(0),
            refunds.get(transfer).copied().unwrap_or(0),
        );
        assert!(
            (c, r) == (1, 0) || (c, r) == (0, 1),
            "{transfer}: {c} credits, {r} refunds"
        );
    }
    // No deadline left behind: each was cancelled by the transfer's end.
    for transfer in started.iter().take(50) {
        assert!(store
            .pending(&format!("transfer-{transfer}"))
            .await
            .unwrap()
            .is_empty());
    }
    eprintln!(
        "{} transfers: {outcomes:?}, runners killed {kills} times",
        started.len()
    );
}

on_every_store!(
    transfers_complete_or_are_compensated_by_refusal_or_deadline,
    a_thousand_transfers_survive_closed_accounts_and_killed_runners,
);
