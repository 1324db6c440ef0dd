//! Snapshots on PostgreSQL: a repository with `with_snapshots(Snapshots::every(10))` keeps
//! the latest state every 10 events, loads from it, and falls back to a full
//! replay when the stored snapshot does not decode or has another format.

mod common;

use common::*;
use evently_core::prelude::*;
use evently_postgres::{sqlx, PgEventStore};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
enum TallyEvent {
    Added { n: u64 },
}

#[derive(Debug, Clone, Command)]
enum TallyCommand {
    Add { id: String, n: u64 },
}

#[derive(Debug, thiserror::Error)]
#[error("cannot add zero")]
struct Zero;

#[derive(Debug, Default, PartialEq, Serialize, Deserialize, Aggregate)]
#[aggregate(name = "tally", event = TallyEvent, command = TallyCommand, error = Zero)]
struct Tally {
    total: u64,
    count: u64,
}

impl Tally {
    fn decide(&self, command: TallyCommand) -> Result<Vec<TallyEvent>, Zero> {
        match command {
            TallyCommand::Add { n: 0, .. } => Err(Zero),
            TallyCommand::Add { n, .. } => Ok(vec![TallyEvent::Added { n }]),
        }
    }

    fn apply(&mut self, event: &TallyEvent) {
        match event {
            TallyEvent::Added { n } => {
                self.total += n;
                self.count += 1;
            }
        }
    }
}

/// The snapshot row of a stream: (version, schema_version, state).
async fn snapshot_row(store: &PgEventStore, stream: &str) -> Option<(i64, i32, serde_json::Value)> {
    sqlx::query_as(&format!(
        "SELECT version, schema_version, state::text FROM \"{}\".snapshots WHERE stream_id = $1",
        store.schema()
    ))
    .bind(stream)
    .fetch_optional(store.pool())
    .await
    .expect("read the snapshot row")
    .map(|(v, s, state): (i64, i32, String)| {
        (
            v,
            s,
            serde_json::from_str(&state).expect("the state is JSON"),
        )
    })
}

async fn add_many(
    tallies: &Repository<Tally, PgEventStore>,
    id: &str,
    range: std::ops::RangeInclusive<u64>,
) {
    for n in range {
        tallies
            .execute(TallyCommand::Add { id: id.into(), n })
            .await
            .unwrap_or_else(|e| panic!("add {n}: {e}"));
    }
}

#[tokio::test]
async fn snapshots_every_ten_events_shorten_loads_and_a_bad_snapshot_means_a_full_replay() {
    let store = fresh_store().await;
    let tallies = Repository::<Tally, _>::new(store.clone()).with_snapshots(Snapshots::every(10));
    add_many(&tallies, "t1", 1..=25).await;
    let sum_25 = (1..=25).sum::<u64>();

    let (version, schema_version, state) =
        snapshot_row(&store, "tally-t1").await.expect("a snapshot");
    assert_eq!(version, 20, "the latest snapshot is at version 20");
    assert_eq!(schema_version, 1);
    assert_eq!(
        state,
        serde_json::json!({ "total": (1..=20).sum::<u64>(), "count": 20 })
    );

    let loaded = tallies.load("t1").await.unwrap();
    assert_eq!(loaded.version, 25);
    assert_eq!(loaded.replayed, 5, "only the events after the snapshot");
    assert_eq!(
        loaded.state,
        Tally {
            total: sum_25,
            count: 25
        }
    );

    // Without snapshots, or with another state format, everything replays.
    let plain = Repository::<Tally, _>::new(store.clone())
        .load("t1")
        .await
        .unwrap();
    assert_eq!((plain.version, plain.replayed), (25, 25));
    assert_eq!(plain.state, loaded.state);
    let newer_format =
        Repository::<Tally, _>::new(store.clone()).with_snapshots(Snapshots::every(10).format(2));
    let reloaded = newer_format.load("t1").await.unwrap();
    assert_eq!((reloaded.version, reloaded.replayed), (25, 25));
    assert_eq!(reloaded.state, loaded.state);

    // A snapshot that no longer decodes is ignored: the load still succeeds,
    // replaying every event.
    let changed = sqlx::query(&format!(
        "UPDATE \"{}\".snapshots SET state = '{{\"total\":\"x\"}}' WHERE stream_id = $1",
        store.schema()
    ))
    .bind("tally-t1")
    .execute(store.pool())
    .await
    .unwrap()
    .rows_affected();
    assert_eq!(changed, 1);
    let recovered = tallies.load("t1").await.unwrap();
    assert_eq!((recovered.version, recovered.replayed), (25, 25));
    assert_eq!(
        recovered.state,
        Tally {
            total: sum_25,
            count: 25
        }
    );

    // Commands still run; the next multiple of ten replaces the bad snapshot.
    add_many(&tallies, "t1", 26..=30).await;
    let (version, _, state) = snapshot_row(&store, "tally-t1").await.unwrap();
    assert_eq!(version, 30);
    assert_eq!(
        state,
        serde_json::json!({ "total": (1..=30).sum::<u64>(), "count": 30 })
    );
    let loaded = tallies.load("t1").await.unwrap();
    assert_eq!((loaded.version, loaded.replayed), (30, 0));
    assert_eq!(
        loaded.state,
        Tally {
            total: (1..=30).sum(),
            count: 30
        }
    );

    // Another stream has its own snapshot, or none.
    add_many(&tallies, "t2", 1..=9).await;
    assert_eq!(snapshot_row(&store, "tally-t2").await, None);
    let t2 = tallies.load("t2").await.unwrap();
    assert_eq!((t2.version, t2.replayed), (9, 9));
}

#[tokio::test]
async fn a_snapshot_is_never_replaced_by_an_older_one() {
    let store = fresh_store().await;
    let tallies = Repository::<Tally, _>::new(store.clone()).with_snapshots(Snapshots::every(10));
    add_many(&tallies, "t", 1..=20).await;
    let stream = StreamId::from("tally-t");
    store
        .save_snapshot(
            &stream,
            evently_core::Snapshot {
                version: 10,
                schema_version: 1,
                state: evently_core::Payload::from_value(
                    &serde_json::json!({ "total": 0, "count": 0 }),
                ),
                taken_at: chrono::Utc::now(),
            },
        )
        .await
        .unwrap();
    let snapshot = store
        .load_snapshot(&stream)
        .await
        .unwrap()
        .expect("a snapshot");
    assert_eq!(snapshot.version, 20);
    assert_eq!(
        snapshot.state.to_value().unwrap(),
        serde_json::json!({ "total": (1..=20).sum::<u64>(), "count": 20 })
    );
    assert_eq!(
        store
            .load_snapshot(&StreamId::from("tally-none"))
            .await
            .unwrap(),
        None
    );
}
