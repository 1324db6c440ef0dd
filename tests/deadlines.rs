//! Durable deadlines on both stores: scheduled, moved, cancelled, claimed
//! by one runner at a time for a lease, fired once by racing runners on a
//! manual clock, and (on PostgreSQL) kept across a restart.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use evently::deadline::{
    run_deadlines, Clock, Deadline, DeadlineOptions, DeadlineStore, ManualClock,
};
use serde_json::json;

#[macro_use]
mod common;

fn start() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 12, 1, 12, 0, 0).unwrap()
}

fn at(seconds: i64) -> DateTime<Utc> {
    start() + chrono::Duration::seconds(seconds)
}

fn deadline(owner: &str, name: &str, seconds: i64) -> Deadline {
    Deadline {
        id: uuid::Uuid::now_v7(),
        owner: owner.into(),
        name: name.into(),
        due: at(seconds),
        payload: json!({ "owner": owner }),
    }
}

const LEASE: Duration = Duration::from_secs(10);

async fn due_deadlines_are_claimed_once_per_lease_and_completed_by_their_claim<S: DeadlineStore>(
    store: S,
) {
    let credit = deadline("transfer-1", "credit", 30);
    let early = deadline("transfer-2", "credit", 10);
    let later = deadline("transfer-1", "expire", 60);
    for d in [&credit, &early, &later] {
        store.schedule(d.clone()).await.unwrap();
    }
    assert!(store
        .claim_due("", at(0), 10, LEASE)
        .await
        .unwrap()
        .is_empty());
    let claimed = store.claim_due("", at(30), 10, LEASE).await.unwrap();
    let ids: Vec<_> = claimed.iter().map(|c| c.deadline.id).collect();
    assert_eq!(ids, [early.id, credit.id], "the due ones, earliest first");
    assert_eq!(claimed[1].deadline, credit, "stored whole");
    assert_eq!(claimed[0].until, at(40));
    // Held: nobody else gets them while the lease runs.
    assert!(store
        .claim_due("", at(35), 10, LEASE)
        .await
        .unwrap()
        .is_empty());
    assert!(store.complete(early.id, claimed[0].claim).await.unwrap());
    assert!(!store
        .complete(credit.id, uuid::Uuid::now_v7())
        .await
        .unwrap());
    // The lease lapsed: another runner takes it, and the old claim can no
    // longer complete it.
    let again = store.claim_due("", at(40), 10, LEASE).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].deadline.id, credit.id);
    assert_ne!(again[0].claim, claimed[1].claim);
    assert!(!store.complete(credit.id, claimed[1].claim).await.unwrap());
    assert!(store.complete(credit.id, again[0].claim).await.unwrap());
    assert_eq!(store.pending("transfer-1").await.unwrap(), vec![later]);
    assert!(store.pending("transfer-2").await.unwrap().is_empty());
    assert_eq!(store.next_due("").await.unwrap(), Some(at(60)));
    // A limit holds.
    for n in 0..5 {
        store
            .schedule(deadline(&format!("t{n}"), "x", 1))
            .await
            .unwrap();
    }
    assert_eq!(store.claim_due("", at(2), 3, LEASE).await.unwrap().len(), 3);
}

async fn scheduling_again_changes_nothing_moving_replaces_and_cancel_removes<S: DeadlineStore>(
    store: S,
) {
    let first = deadline("order-7", "payment", 30);
    store.schedule(first.clone()).await.unwrap();
    store.schedule(first.clone()).await.unwrap();
    assert_eq!(store.pending("order-7").await.unwrap(), vec![first.clone()]);
    // A claimed deadline scheduled again under its id stays claimed.
    let claimed = store.claim_due("", at(30), 10, LEASE).await.unwrap();
    store.schedule(first.clone()).await.unwrap();
    assert!(store
        .claim_due("", at(31), 10, LEASE)
        .await
        .unwrap()
        .is_empty());
    // Moved (another id, same owner and name): one deadline, the new one,
    // unclaimed.
    let moved = deadline("order-7", "payment", 90);
    store.schedule(moved.clone()).await.unwrap();
    assert_eq!(store.pending("order-7").await.unwrap(), vec![moved]);
    assert!(!store.complete(first.id, claimed[0].claim).await.unwrap());
    assert!(store
        .claim_due("", at(60), 10, LEASE)
        .await
        .unwrap()
        .is_empty());
    assert!(store.cancel("order-7", "payment").await.unwrap());
    assert!(!store.cancel("order-7", "payment").await.unwrap());
    assert!(store.pending("order-7").await.unwrap().is_empty());
    assert_eq!(store.next_due("").await.unwrap(), None);
}

/// 40 deadlines, two runners on one manual clock: each fires once.
async fn racing_runners_fire_each_deadline_once<S: DeadlineStore>(store: S) {
    let clock = ManualClock::new(start());
    let mut scheduled = Vec::new();
    for n in 0..40 {
        let d = deadline(&format!("transfer-{n}"), "credit", 1 + n);
        store.schedule(d.clone()).await.unwrap();
        scheduled.push(d.id);
    }
    // Each deadline's firings, and the clock's time at the first.
    type Fired = BTreeMap<uuid::Uuid, (u32, DateTime<Utc>)>;
    let fired: Arc<Mutex<Fired>> = Default::default();
    let (all_fired, _) = tokio::sync::watch::channel(0usize);
    let all_fired = Arc::new(all_fired);
    let runner = || {
        let (fired, clock_now, all_fired) =
            (Arc::clone(&fired), clock.clone(), Arc::clone(&all_fired));
        run_deadlines(
            store.clone(),
            clock.clone(),
            "transfer-".to_owned(),
            // A lease longer than the clock's jumps: a handled deadline
            // is completed before its lease could lapse (what a lapse does
            // is the first test's).
            DeadlineOptions {
                batch: 3,
                lease: Duration::from_secs(3_600),
                ..DeadlineOptions::default()
            },
            move |d: Deadline| {
                let (fired, now, all_fired) =
                    (Arc::clone(&fired), clock_now.now(), Arc::clone(&all_fired));
                async move {
                    tokio::task::yield_now().await;
                    let mut fired = fired.lock().unwrap();
                    fired.entry(d.id).or_insert((0, now)).0 += 1;
                    all_fired.send_replace(fired.len());
                    Ok(())
                }
            },
        )
    };
    let (one, two) = (runner(), runner());
    // Nothing is due yet.
    tokio::task::yield_now().await;
    assert!(fired.lock().unwrap().is_empty());
    clock.advance(Duration::from_secs(20));
    let mut seen = all_fired.subscribe();
    tokio::time::timeout(Duration::from_secs(10), seen.wait_for(|n| *n >= 19))
        .await
        .expect("the 19 due by 20 s fire")
        .unwrap();
    clock.advance(Duration::from_secs(30));
    tokio::time::timeout(Duration::from_secs(10), seen.wait_for(|n| *n >= 40))
        .await
        .expect("all fire")
        .unwrap();
    let fired = fired.lock().unwrap().clone();
    assert_eq!(fired.len(), 40);
    assert!(fired.values().all(|(times, _)| *times == 1), "{fired:?}");
    // None fired before its time.
    for (n, id) in scheduled.iter().enumerate() {
        assert!(fired[id].1 >= at(1 + n as i64));
    }
    // Fired ones are gone (completion follows the handler; wait for it).
    for _ in 0..1_000 {
        if store.next_due("").await.unwrap().is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(store.next_due("").await.unwrap(), None);
    one.abort();
    two.abort();
}

on_every_store!(
    due_deadlines_are_claimed_once_per_lease_and_completed_by_their_claim,
    scheduling_again_changes_nothing_moving_replaces_and_cancel_removes,
    racing_runners_fire_each_deadline_once,
);

/// Set by one process, fired once by the next two racing for it: the
/// table outlives the handle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_set_before_a_restart_fires_after_it_once_with_two_runners_racing() {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let schema = format!("es_test_{}", uuid::Uuid::now_v7().simple());
    let connect = || {
        evently_postgres::PgEventStore::builder()
            .schema(schema.clone())
            .connect(&url)
    };
    let before = connect().await.expect("PostgreSQL at DATABASE_URL");
    let set = deadline("transfer-9", "credit", 5);
    before.schedule(set.clone()).await.unwrap();
    before.pool().close().await;
    drop(before);

    // After the restart, two runners (two processes' worth) race for it.
    let after = connect().await.unwrap();
    let clock = ManualClock::new(start());
    let (fired, mut seen) = tokio::sync::watch::channel(Vec::new());
    let fired = Arc::new(fired);
    let runner = || {
        let fired = Arc::clone(&fired);
        run_deadlines(
            after.clone(),
            clock.clone(),
            String::new(),
            DeadlineOptions::default(),
            move |d: Deadline| {
                let fired = Arc::clone(&fired);
                async move {
                    fired.send_modify(|f| f.push(d));
                    Ok(())
                }
            },
        )
    };
    let (one, two) = (runner(), runner());
    clock.advance(Duration::from_secs(5));
    tokio::time::timeout(Duration::from_secs(10), seen.wait_for(|f| !f.is_empty()))
        .await
        .expect("it fires after the restart")
        .unwrap();
    // Fired and completed: gone, so neither runner can take it again.
    for _ in 0..1_000 {
        if after.next_due("").await.unwrap().is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(after.next_due("").await.unwrap(), None);
    clock.advance(Duration::from_secs(3_600));
    one.abort();
    two.abort();
    assert_eq!(*fired.borrow(), [set]);
}
