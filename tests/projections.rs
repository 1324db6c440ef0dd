//! Projections on the in-memory store and read model: catch-up then live,
//! skipped types never decoded, retries, stop and park policies, panics
//! contained, read-your-writes, crash-restart, takeover, back-pressure.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use evently::memory::MemoryStore;
use evently::prelude::*;
use evently::projection::run_projection;
use evently::projection::{
    HandlerError, MemoryReadModel, OnFailure, Projection, ProjectionOptions, ProjectionState,
};
use evently::Payload;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
enum LedgerEvent {
    Credited { amount: u64 },
    Noted { text: String },
}

type Totals = BTreeMap<String, u64>;

/// Sums credits per stream; fails on amounts in `poison`, and panics on
/// 666 when `panics`.
#[derive(Default)]
struct TotalsProjection {
    name: &'static str,
    panics: bool,
    poison: Vec<u64>,
    fail_first: Option<Arc<AtomicU32>>,
    delay: Option<Duration>,
}

impl Projection for TotalsProjection {
    type Event = LedgerEvent;
    type Sink = Totals;

    fn name(&self) -> &str {
        self.name
    }

    fn handles(&self) -> &[&str] {
        &["Credited"]
    }

    async fn apply(
        &self,
        totals: &mut Totals,
        event: &RecordedEvent<LedgerEvent>,
    ) -> Result<(), HandlerError> {
        let LedgerEvent::Credited { amount } = event.data else {
            return Err("only credits are handled".into());
        };
        if let Some(delay) = self.delay {
            tokio::time::sleep(delay).await;
        }
        if self.panics && amount == 666 {
            panic!("the number of the beast");
        }
        if self.poison.contains(&amount) {
            return Err(format!("cannot credit {amount}").into());
        }
        if let Some(left) = &self.fail_first {
            if left.load(Ordering::SeqCst) > 0 {
                left.fetch_sub(1, Ordering::SeqCst);
                return Err("temporarily unavailable".into());
            }
        }
        *totals.entry(event.stream_id.to_string()).or_default() += amount;
        Ok(())
    }
}

fn credit(amount: u64) -> NewEvent {
    NewEvent::from_event(&LedgerEvent::Credited { amount }, Metadata::new()).unwrap()
}

async fn credit_to(store: &MemoryStore, stream: &str, amounts: &[u64]) -> u64 {
    let recorded = store
        .append(
            &StreamId::from(stream),
            ExpectedVersion::Any,
            amounts.iter().map(|&a| credit(a)).collect(),
        )
        .await
        .unwrap();
    recorded.last().unwrap().global_position
}

fn fast() -> ProjectionOptions {
    ProjectionOptions::default().retries(2, Duration::from_millis(1))
}

#[tokio::test]
async fn catches_up_then_follows_live() {
    let store = MemoryStore::new();
    credit_to(&store, "a", &[1, 2, 3]).await;
    let model = MemoryReadModel::<Totals>::default();
    let handle = run_projection(
        store.clone(),
        TotalsProjection {
            name: "totals",
            ..Default::default()
        },
        model.clone(),
        fast(),
    );
    handle.wait_for(3, Duration::from_secs(5)).await.unwrap();
    assert_eq!(model.read(|t| t.clone()), BTreeMap::from([("a".into(), 6)]));
    let last = credit_to(&store, "b", &[10]).await;
    handle.wait_for(last, Duration::from_secs(5)).await.unwrap();
    assert_eq!(model.read(|t| t["b"]), 10);
    let status = handle.stop().await;
    assert_eq!(status.state, ProjectionState::Stopped);
    assert_eq!((status.position, status.processed), (4, 4));
    assert_eq!(model.checkpoint(), 4);
}

#[tokio::test]
async fn events_it_does_not_handle_are_never_decoded() {
    let store = MemoryStore::new();
    credit_to(&store, "a", &[5]).await;
    // A `Noted` whose payload could not decode: skipped, so harmless.
    store
        .append(
            &StreamId::from("a"),
            ExpectedVersion::Any,
            vec![NewEvent::raw(
                "Noted",
                1,
                Payload::from_json("[1,2,3]").unwrap(),
                Metadata::new(),
            )],
        )
        .await
        .unwrap();
    let last = credit_to(&store, "a", &[7]).await;
    let model = MemoryReadModel::<Totals>::default();
    let handle = run_projection(
        store.clone(),
        TotalsProjection {
            name: "totals",
            ..Default::default()
        },
        model.clone(),
        fast(),
    );
    handle.wait_for(last, Duration::from_secs(5)).await.unwrap();
    assert_eq!(model.read(|t| t["a"]), 12);
    assert!(model.parked().is_empty());
}

#[tokio::test]
async fn a_transient_failure_is_retried_and_applied_once() {
    let store = MemoryStore::new();
    let last = credit_to(&store, "a", &[1, 2, 3]).await;
    let model = MemoryReadModel::<Totals>::default();
    let projection = TotalsProjection {
        name: "totals",
        fail_first: Some(Arc::new(AtomicU32::new(2))),
        ..Default::default()
    };
    let handle = run_projection(store.clone(), projection, model.clone(), fast());
    handle.wait_for(last, Duration::from_secs(5)).await.unwrap();
    assert_eq!(model.read(|t| t["a"]), 6, "each credit counted once");
    assert!(model.parked().is_empty());
}

#[tokio::test]
async fn under_the_stop_policy_a_failing_event_stops_the_projection_before_it() {
    let store = MemoryStore::new();
    credit_to(&store, "a", &[1, 13, 2]).await;
    let model = MemoryReadModel::<Totals>::default();
    let projection = TotalsProjection {
        name: "totals",
        poison: vec![13],
        ..Default::default()
    };
    let handle = run_projection(
        store.clone(),
        projection,
        model.clone(),
        fast().on_failure(OnFailure::Stop),
    );
    let error = handle
        .wait_for(3, Duration::from_secs(5))
        .await
        .unwrap_err();
    let status = handle.status();
    let ProjectionState::Failed(reason) = &status.state else {
        panic!("expected a failed projection, got {status:?} ({error})");
    };
    assert_eq!(
        reason,
        "event `Credited` at position 2 (stream `a` version 2) failed 3 times: cannot credit 13"
    );
    assert_eq!(status.position, 1);
    assert_eq!(model.checkpoint(), 1);
    assert_eq!(model.read(|t| t["a"]), 1);
}

#[tokio::test]
async fn under_the_park_policy_a_failing_event_is_parked_and_the_rest_applied() {
    let store = MemoryStore::new();
    let last = credit_to(&store, "a", &[1, 13, 2]).await;
    let model = MemoryReadModel::<Totals>::default();
    let projection = TotalsProjection {
        name: "totals",
        poison: vec![13],
        ..Default::default()
    };
    let handle = run_projection(
        store.clone(),
        projection,
        model.clone(),
        fast().on_failure(OnFailure::Park),
    );
    handle.wait_for(last, Duration::from_secs(5)).await.unwrap();
    assert_eq!(model.read(|t| t["a"]), 3);
    let parked = model.parked();
    assert_eq!(parked.len(), 1);
    assert_eq!(
        (
            parked[0].position,
            parked[0].stream_id.as_str(),
            parked[0].stream_version
        ),
        (2, "a", 2)
    );
    assert!(
        parked[0].error.ends_with("cannot credit 13"),
        "{}",
        parked[0].error
    );
    assert_eq!(handle.status().parked, 1);
    drop(handle);
    // Still failing: an error, and the event stays parked, the model as it was.
    let still_poisoned = TotalsProjection {
        name: "totals",
        poison: vec![13],
        ..Default::default()
    };
    assert!(model.retry_parked(&still_poisoned, 2).await.is_err());
    assert_eq!((model.parked().len(), model.read(|t| t["a"])), (1, 3));
    // Fixed: applied once, and no longer parked.
    let fixed = TotalsProjection {
        name: "totals",
        ..Default::default()
    };
    assert!(model.retry_parked(&fixed, 2).await.unwrap());
    assert!(model.parked().is_empty());
    assert_eq!(model.read(|t| t["a"]), 16);
    assert!(
        !model.retry_parked(&fixed, 2).await.unwrap(),
        "not parked any more"
    );
}

#[tokio::test]
async fn a_panic_stops_that_projection_only() {
    let store = MemoryStore::new();
    let last = credit_to(&store, "a", &[1, 666, 2]).await;
    let panicking = MemoryReadModel::<Totals>::default();
    let healthy = MemoryReadModel::<Totals>::default();
    let bad = run_projection(
        store.clone(),
        TotalsProjection {
            name: "bad",
            panics: true,
            ..Default::default()
        },
        panicking.clone(),
        fast(),
    );
    let good = run_projection(
        store.clone(),
        TotalsProjection {
            name: "good",
            poison: vec![666],
            ..Default::default()
        },
        healthy.clone(),
        fast().on_failure(OnFailure::Park),
    );
    good.wait_for(last, Duration::from_secs(5)).await.unwrap();
    assert!(bad.wait_for(last, Duration::from_secs(5)).await.is_err());
    assert_eq!(
        bad.status().state,
        ProjectionState::Failed("the projection panicked: the number of the beast".into())
    );
    assert_eq!(healthy.read(|t| t["a"]), 3);
    assert_eq!(
        panicking.checkpoint(),
        0,
        "the panicking batch left nothing behind"
    );
}

#[tokio::test]
async fn waiting_for_a_position_that_is_not_reached_times_out_with_where_it_is() {
    let store = MemoryStore::new();
    credit_to(&store, "a", &[1]).await;
    let model = MemoryReadModel::<Totals>::default();
    let handle = run_projection(
        store.clone(),
        TotalsProjection {
            name: "totals",
            ..Default::default()
        },
        model,
        fast(),
    );
    handle.wait_for(1, Duration::from_secs(5)).await.unwrap();
    let error = handle
        .wait_for(99, Duration::from_millis(50))
        .await
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "projection `totals` reached position 1, not 99, within 50ms"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn aborted_at_random_points_and_restarted_it_counts_every_event_once() {
    let store = MemoryStore::new();
    let mut expected = Totals::new();
    for i in 0..2_000u64 {
        let stream = format!("s{}", i % 7);
        *expected.entry(stream.clone()).or_default() += i + 1;
        credit_to(&store, &stream, &[i + 1]).await;
    }
    let model = MemoryReadModel::<Totals>::default();
    let options = ProjectionOptions::default().batch_size(37);
    let mut seed = 0x2545_f491_u64;
    for _ in 0..30 {
        let handle = run_projection(
            store.clone(),
            TotalsProjection {
                name: "totals",
                ..Default::default()
            },
            model.clone(),
            options.clone(),
        );
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        tokio::time::sleep(Duration::from_micros(seed % 3_000)).await;
        handle.abort();
        while !handle.is_finished() {
            tokio::task::yield_now().await;
        }
    }
    let handle = run_projection(
        store.clone(),
        TotalsProjection {
            name: "totals",
            ..Default::default()
        },
        model.clone(),
        options,
    );
    handle
        .wait_for(2_000, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(model.read(|t| t.clone()), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_instance_runs_and_another_takes_over_when_it_dies() {
    let store = MemoryStore::new();
    credit_to(&store, "a", &[1, 2]).await;
    let model = MemoryReadModel::<Totals>::default();
    let first = run_projection(
        store.clone(),
        TotalsProjection {
            name: "totals",
            ..Default::default()
        },
        model.clone(),
        fast(),
    );
    first.wait_for(2, Duration::from_secs(5)).await.unwrap();
    let second = run_projection(
        store.clone(),
        TotalsProjection {
            name: "totals",
            ..Default::default()
        },
        model.clone(),
        fast(),
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(second.status().state, ProjectionState::Standby);
    first.abort();
    let last = credit_to(&store, "a", &[3, 4]).await;
    second.wait_for(last, Duration::from_secs(5)).await.unwrap();
    assert_eq!(second.status().state, ProjectionState::Running);
    assert_eq!(model.read(|t| t["a"]), 10, "no event applied twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_projection_never_slows_the_writers() {
    let store = MemoryStore::new();
    let model = MemoryReadModel::<Totals>::default();
    let slow = TotalsProjection {
        name: "slow",
        delay: Some(Duration::from_millis(2)),
        ..Default::default()
    };
    let handle = run_projection(
        store.clone(),
        slow,
        model.clone(),
        ProjectionOptions::default().batch_size(16),
    );
    let mut writers = Vec::new();
    for w in 0..8 {
        let store = store.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..500 {
                credit_to(&store, &format!("w{w}"), &[i]).await;
            }
        }));
    }
    tokio::time::timeout(Duration::from_secs(10), async {
        for writer in writers {
            writer.await.unwrap();
        }
    })
    .await
    .expect("writers finish while the projection lags");
    let behind = store.event_count() as u64 - handle.status().position;
    assert!(
        behind > 1_000,
        "the projection lags by {behind} events: it reads at its own pace"
    );
    handle.stop().await;
}

/// A store whose event at one position reads as a corrupt row (as one whose
/// metadata no longer decodes does on PostgreSQL): five credits to `a`, a
/// `Noted` event in `note` that is unreadable (of a type the projection does
/// not handle), five credits to `a`, an unreadable credit in `bad`, two
/// credits to `a`. Returns the store and the positions of the tenth good
/// credit, of the bad credit and of the last event.
async fn log_with_unreadable_rows() -> (evently::testing::FaultyStore<MemoryStore>, u64, u64, u64) {
    let store = MemoryStore::new();
    credit_to(&store, "a", &[1, 2, 3, 4, 5]).await;
    let note = NewEvent::from_event(&LedgerEvent::Noted { text: "hi".into() }, Metadata::new());
    let note = store
        .append(
            &StreamId::from("note"),
            ExpectedVersion::Any,
            vec![note.unwrap()],
        )
        .await
        .unwrap()[0]
        .global_position;
    let tenth = credit_to(&store, "a", &[6, 7, 8, 9, 10]).await;
    let bad = credit_to(&store, "bad", &[100]).await;
    let last = credit_to(&store, "a", &[11, 12]).await;
    let faulty = evently::testing::FaultyStore::new(store);
    faulty.make_unreadable(note);
    faulty.make_unreadable(bad);
    (faulty, tenth, bad, last)
}

#[tokio::test]
async fn under_the_stop_policy_an_unreadable_row_stops_the_projection_after_the_events_before_it() {
    let (store, tenth, bad, last) = log_with_unreadable_rows().await;
    let model = MemoryReadModel::<Totals>::default();
    let handle = run_projection(
        store,
        TotalsProjection {
            name: "totals",
            ..Default::default()
        },
        model.clone(),
        fast().on_failure(OnFailure::Stop),
    );
    assert!(handle.wait_for(last, Duration::from_secs(5)).await.is_err());
    let status = handle.status();
    assert_eq!(
        status.state,
        ProjectionState::Failed(format!(
            "the row at position {bad} (stream `bad` version 1) cannot be read: corrupt event \
             in stream `bad` at version 1: injected fault: the row cannot be read"
        ))
    );
    assert_eq!((status.position, model.checkpoint()), (tenth, tenth));
    assert_eq!(
        model.read(|t| t.clone()),
        BTreeMap::from([("a".into(), 55)])
    );
    assert!(model.parked().is_empty());
}

#[tokio::test]
async fn under_the_park_policy_an_unreadable_row_is_parked_and_the_projection_goes_on() {
    let (store, _, bad, last) = log_with_unreadable_rows().await;
    let model = MemoryReadModel::<Totals>::default();
    let handle = run_projection(
        store.clone(),
        TotalsProjection {
            name: "totals",
            ..Default::default()
        },
        model.clone(),
        fast().on_failure(OnFailure::Park),
    );
    handle.wait_for(last, Duration::from_secs(5)).await.unwrap();
    assert_eq!(handle.status().state, ProjectionState::Running);
    assert_eq!(
        handle.status().parked,
        1,
        "the unhandled `Noted` row is skipped"
    );
    assert_eq!(
        model.read(|t| t.clone()),
        BTreeMap::from([("a".into(), 78)])
    );
    let parked = model.parked();
    assert_eq!(parked.len(), 1);
    let event = &parked[0];
    assert_eq!(
        (
            event.position,
            event.stream_id.as_str(),
            event.stream_version,
            event.event_type.as_str()
        ),
        (bad, "bad", 1, "Credited")
    );
    assert!(
        parked[0].error.starts_with(&format!(
            "the row at position {bad} (stream `bad` version 1) cannot be read"
        )),
        "{}",
        parked[0].error
    );
    let more = credit_to(store.inner(), "a", &[13]).await;
    handle.wait_for(more, Duration::from_secs(5)).await.unwrap();
    assert_eq!(model.read(|t| t["a"]), 91);
    handle.stop().await;
}

/// Over a log whose stream `gone` was erased (its events last in the log),
/// a projection run from zero into a fresh read model — the in-memory
/// rebuild — holds nothing of the erased events, parks none, and its
/// checkpoint moves past them to the head.
#[tokio::test]
async fn a_run_from_zero_over_an_erased_stream_holds_nothing_of_it() {
    let store = MemoryStore::new();
    credit_to(&store, "kept", &[1, 2]).await;
    credit_to(&store, "gone", &[40]).await;
    credit_to(&store, "kept", &[3]).await;
    let head = credit_to(&store, "gone", &[50, 60]).await;
    assert_eq!(
        store.erase_stream(&StreamId::from("gone")).await.unwrap(),
        3
    );
    for run in 0..2 {
        let model = MemoryReadModel::<Totals>::default();
        let handle = run_projection(
            store.clone(),
            TotalsProjection {
                name: "totals",
                ..Default::default()
            },
            model.clone(),
            fast(),
        );
        handle.wait_for(head, Duration::from_secs(5)).await.unwrap();
        assert_eq!(
            model.read(|t| t.clone()),
            BTreeMap::from([("kept".into(), 6)]),
            "run {run}"
        );
        assert_eq!(model.checkpoint(), head, "run {run}");
        assert!(model.parked().is_empty(), "run {run}");
        handle.stop().await;
    }
}
