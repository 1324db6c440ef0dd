//! Bad data and odd input: rows changed behind the store's back give typed
//! errors that say where they are, and leave everything else readable;
//! strange stream ids and huge payloads round-trip; refusals say exactly
//! what was refused.

mod common;

use std::time::Duration;

use common::*;
use evently_core::prelude::*;
use evently_core::{DecodeErrorKind, Payload};
use evently_postgres::{sqlx, PgEventStore};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
enum AccountEvent {
    Opened { owner: String },
    Deposited { amount: u64 },
}

#[derive(Debug, Clone, Command)]
enum AccountCommand {
    Open { id: String, owner: String },
    Deposit { id: String, amount: u64 },
}

#[derive(Debug, PartialEq, thiserror::Error)]
#[error("the account is already open")]
struct AlreadyOpen;

#[derive(Debug, Default, Aggregate)]
#[aggregate(name = "account", event = AccountEvent, command = AccountCommand, error = AlreadyOpen)]
struct Account {
    owner: Option<String>,
    balance: u64,
}

impl Account {
    fn decide(&self, command: AccountCommand) -> Result<Vec<AccountEvent>, AlreadyOpen> {
        match command {
            AccountCommand::Open { owner, .. } if self.owner.is_none() => {
                Ok(vec![AccountEvent::Opened { owner }])
            }
            AccountCommand::Open { .. } => Err(AlreadyOpen),
            AccountCommand::Deposit { amount, .. } => Ok(vec![AccountEvent::Deposited { amount }]),
        }
    }

    fn apply(&mut self, event: &AccountEvent) {
        match event {
            AccountEvent::Opened { owner } => self.owner = Some(owner.clone()),
            AccountEvent::Deposited { amount } => self.balance += amount,
        }
    }
}

/// Opens `account-{id}` and deposits 5 and 7: versions 1, 2, 3.
async fn open_with_deposits(accounts: &Repository<Account, PgEventStore>, id: &str) {
    for command in [
        AccountCommand::Open {
            id: id.into(),
            owner: format!("owner of {id}"),
        },
        AccountCommand::Deposit {
            id: id.into(),
            amount: 5,
        },
        AccountCommand::Deposit {
            id: id.into(),
            amount: 7,
        },
    ] {
        accounts.execute(command).await.unwrap();
    }
}

/// Runs one statement on the store's schema: `{s}` stands for the quoted
/// schema name; `$1` is bound to `stream`.
async fn tamper(store: &PgEventStore, sql: &str, stream: &str) -> u64 {
    let sql = sql.replace("{s}", &format!("\"{}\"", store.schema()));
    sqlx::query(&sql)
        .bind(stream)
        .execute(store.pool())
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .rows_affected()
}

#[tokio::test]
async fn a_payload_that_no_longer_matches_its_event_is_a_decode_error_naming_where_it_is() {
    let store = fresh_store().await;
    // Without the cache: a warm aggregate decides without reading its
    // stream again, so it would not see the row changed under it.
    let accounts = Repository::<Account, _>::new(store.clone()).without_cache();
    open_with_deposits(&accounts, "x").await;
    open_with_deposits(&accounts, "y").await;
    let changed = tamper(
        &store,
        r#"UPDATE {s}.events SET payload = '{"amount":"lots"}' WHERE stream_id = $1 AND stream_version = 2"#,
        "account-x",
    )
    .await;
    assert_eq!(changed, 1);

    let error = accounts.load("x").await.unwrap_err();
    let CommandError::Decode(decode) = &error else {
        panic!("expected CommandError::Decode, got {error:?}");
    };
    assert_eq!(decode.stream_id.as_str(), "account-x");
    assert_eq!(decode.stream_version, 2);
    assert_eq!(decode.event_type, "Deposited");
    assert_eq!(decode.schema_version, 1);
    assert!(
        matches!(decode.kind, DecodeErrorKind::Payload(_)),
        "{:?}",
        decode.kind
    );
    let message = error.to_string();
    assert!(
        message.starts_with(
            "cannot decode event `Deposited` (schema version 1) at version 2 of stream `account-x`: \
             payload does not match the event: invalid type: string \"lots\""
        ),
        "{message}"
    );
    // A command on it fails the same way and writes nothing.
    let refused = accounts
        .execute(AccountCommand::Deposit {
            id: "x".into(),
            amount: 1,
        })
        .await
        .unwrap_err();
    assert!(matches!(refused, CommandError::Decode(_)), "{refused:?}");
    assert_eq!(
        store
            .stream_version(&StreamId::from("account-x"))
            .await
            .unwrap(),
        3
    );

    // Everything else still loads and reads.
    let y = accounts.load("y").await.unwrap();
    assert_eq!((y.state.balance, y.version, y.replayed), (12, 3, 3));
    assert_eq!(y.state.owner.as_deref(), Some("owner of y"));
    let raw = store
        .read_stream(&StreamId::from("account-x"), 1, 10)
        .await
        .unwrap();
    assert_eq!(raw.len(), 3, "the store reads the row; only decoding fails");
    assert_eq!(
        raw[1].data.to_value().unwrap(),
        serde_json::json!({ "amount": "lots" })
    );
    let reader = second_handle(&store).await;
    read_log_until(&reader, PATIENCE, |log| log.len() == 6).await;
}

#[tokio::test]
async fn an_unknown_event_type_written_by_sql_is_an_unknown_event_type_error() {
    let store = fresh_store().await;
    let accounts = Repository::<Account, _>::new(store.clone());
    open_with_deposits(&accounts, "x").await;
    open_with_deposits(&accounts, "y").await;
    // Another program appends a fourth event of a type this code does not know.
    let inserted = tamper(
        &store,
        r#"WITH s AS (UPDATE {s}.streams SET version = version + 1 WHERE stream_id = $1 RETURNING version)
           INSERT INTO {s}.events (position, event_id, stream_id, stream_version, event_type, schema_version, payload, metadata)
           SELECT pg_current_xact_id()::text::bigint << 20, gen_random_uuid(), $1, s.version,
                  'Frozen', 1, '{"reason":"audit"}', '{"timestamp":"2024-05-01T12:00:00Z"}'
           FROM s"#,
        "account-x",
    )
    .await;
    assert_eq!(inserted, 1);

    let error = accounts.load("x").await.unwrap_err();
    let CommandError::Decode(decode) = &error else {
        panic!("expected CommandError::Decode, got {error:?}");
    };
    assert_eq!(decode.stream_id.as_str(), "account-x");
    assert_eq!(decode.stream_version, 4);
    assert_eq!(decode.event_type, "Frozen");
    match &decode.kind {
        DecodeErrorKind::UnknownEventType { known } => assert_eq!(known, "Opened, Deposited"),
        other => panic!("expected UnknownEventType, got {other:?}"),
    }
    assert_eq!(
        error.to_string(),
        "cannot decode event `Frozen` (schema version 1) at version 4 of stream `account-x`: \
         unknown event type (known: Opened, Deposited)"
    );

    // A schema version the code does not read is its own error.
    tamper(
        &store,
        "UPDATE {s}.events SET schema_version = 7 WHERE stream_id = $1 AND stream_version = 2",
        "account-y",
    )
    .await;
    match accounts.load("y").await.unwrap_err() {
        CommandError::Decode(decode) => {
            assert_eq!(decode.stream_version, 2);
            assert!(matches!(
                decode.kind,
                DecodeErrorKind::UnsupportedSchemaVersion {
                    found: 7,
                    current: 1
                }
            ));
        }
        other => panic!("expected CommandError::Decode, got {other:?}"),
    }
    // The store itself reads both streams fine.
    let x = store
        .read_stream(&StreamId::from("account-x"), 1, 10)
        .await
        .unwrap();
    assert_eq!(
        x.iter().map(|e| e.event_type.as_ref()).collect::<Vec<_>>(),
        ["Opened", "Deposited", "Deposited", "Frozen"]
    );
    assert_eq!(
        x[3].metadata.timestamp.to_rfc3339(),
        "2024-05-01T12:00:00+00:00"
    );
}

#[tokio::test]
async fn metadata_of_the_wrong_shape_is_a_corrupt_error_naming_stream_and_version() {
    let store = fresh_store().await;
    let reader = second_handle(&store).await;
    let bad = StreamId::from("bad-meta");
    let good = StreamId::from("good");
    store
        .append(&good, ExpectedVersion::NoStream, numbered_batch(0, 2))
        .await
        .unwrap();
    let written = store
        .append(&bad, ExpectedVersion::NoStream, numbered_batch(10, 3))
        .await
        .unwrap();
    store
        .append(&good, ExpectedVersion::Exact(2), numbered_batch(2, 2))
        .await
        .unwrap();
    // The readable bound is cluster-wide: wait until another test's open
    // transaction no longer holds these events back, so that the reads
    // below do reach the bad row.
    read_log_until(&reader, PATIENCE, |log| log.len() == 7).await;
    let changed = tamper(
        &store,
        "UPDATE {s}.events SET metadata = '[1,2]' WHERE stream_id = $1 AND stream_version = 2",
        "bad-meta",
    )
    .await;
    assert_eq!(changed, 1);

    #[track_caller]
    fn assert_corrupt(result: Result<Vec<RecordedEvent>, StoreError>, what: &str) {
        match result {
            Err(StoreError::Corrupt {
                stream_id,
                stream_version,
                reason,
            }) => {
                assert_eq!(stream_id.as_str(), "bad-meta", "{what}");
                assert_eq!(stream_version, 2, "{what}");
                assert!(reason.contains("metadata"), "{what}: {reason}");
            }
            other => panic!("{what}: expected StoreError::Corrupt, got {other:?}"),
        }
    }
    assert_corrupt(reader.read_stream(&bad, 1, 10).await, "read_stream");
    assert_corrupt(reader.read_all(0, 100).await, "read_all");
    let error = reader.read_stream(&bad, 1, 10).await.unwrap_err();
    assert!(
        error.to_string().starts_with(
            "corrupt event in stream `bad-meta` at version 2: metadata does not decode"
        ),
        "{error}"
    );

    // Around the bad row, everything reads.
    assert_eq!(reader.read_stream(&good, 1, 10).await.unwrap().len(), 4);
    assert_eq!(reader.read_stream(&bad, 1, 1).await.unwrap().len(), 1);
    let tail = reader.read_stream(&bad, 3, 10).await.unwrap();
    assert_eq!(tail.len(), 1);
    assert_eq!(tail[0].event_id, written[2].event_id);
    let after = reader
        .read_all(written[1].global_position + 1, 100)
        .await
        .unwrap();
    assert_eq!(
        after.len(),
        3,
        "the third bad-meta event and the last two good ones"
    );

    // A subscription reaching the row yields the error, then ends. (It
    // reads a page at a time and the page holding the bad row fails as a
    // whole, so the events before it in that page are not delivered.)
    let mut subscription = reader.subscribe(0);
    let failure = tokio::time::timeout(PATIENCE, async {
        loop {
            match subscription.next().await {
                Some(Ok(_)) => {}
                Some(Err(error)) => return error,
                None => panic!("the subscription ended without an error"),
            }
        }
    })
    .await
    .expect("the subscription reaches the bad row");
    assert_corrupt(Err(failure), "subscribe");
    let end = tokio::time::timeout(Duration::from_secs(5), subscription.next()).await;
    assert!(
        matches!(end, Ok(None)),
        "the subscription ends after the error: {end:?}"
    );

    // Metadata without its timestamp, or with one of the wrong type, too.
    for metadata in ["{}", r#"{"timestamp": 5}"#, "null", r#""text""#] {
        tamper(
            &store,
            &format!("UPDATE {{s}}.events SET metadata = '{metadata}' WHERE stream_id = $1 AND stream_version = 2"),
            "bad-meta",
        )
        .await;
        assert_corrupt(reader.read_stream(&bad, 1, 10).await, metadata);
    }
}

#[tokio::test]
async fn a_one_thousand_character_stream_id_round_trips() {
    let store = fresh_store().await;
    let pieces = [
        "'",
        "\"",
        "`",
        "\\",
        "%",
        "_",
        ";",
        " ",
        "--",
        "/*",
        "*/",
        "é",
        "ß",
        "漢",
        "字",
        "🦀",
        "\u{200d}",
        "\t",
        "\n",
        "a",
        "Z",
        "0",
        "$1",
        "DROP TABLE events;",
    ];
    let mut id = String::new();
    let mut i = 0;
    while id.chars().count() < 1000 {
        id.push_str(pieces[i % pieces.len()]);
        i += 1;
    }
    let id: String = id.chars().take(1000).collect();
    assert_eq!(id.chars().count(), 1000);
    assert!(!id.contains('\0'));
    let stream = StreamId::from(id.as_str());
    let truncated = StreamId::from(&id[..id.char_indices().nth(999).unwrap().0]);

    let written = store
        .append(&stream, ExpectedVersion::NoStream, numbered_batch(0, 3))
        .await
        .unwrap();
    let read = store.read_stream(&stream, 1, 10).await.unwrap();
    assert_eq!(as_json(&read), as_json(&written));
    assert_eq!(read[0].stream_id.as_str(), id);
    assert_eq!(store.stream_version(&stream).await.unwrap(), 3);
    assert!(store
        .read_stream(&truncated, 1, 10)
        .await
        .unwrap()
        .is_empty());
    let reader = second_handle(&store).await;
    let log = read_log_until(&reader, PATIENCE, |log| log.len() == 3).await;
    assert!(log.iter().all(|e| e.stream_id.as_str() == id));
}

#[tokio::test]
async fn a_stream_id_beyond_the_documented_limit_is_a_typed_error() {
    let store = fresh_store().await;
    // 512 characters outside the BMP: exactly the limit of 2,048 bytes.
    let at_limit: String = (0..512u32)
        .map(|i| char::from_u32(0x1F300 + (i * 7) % 0x300).unwrap())
        .collect();
    assert_eq!(at_limit.len(), evently_postgres::MAX_STREAM_ID_BYTES);
    let stream = StreamId::from(at_limit.as_str());
    let written = store
        .append(&stream, ExpectedVersion::NoStream, numbered_batch(0, 2))
        .await
        .expect("a stream id at the limit is stored");
    let read = store.read_stream(&stream, 1, 10).await.unwrap();
    assert_eq!(as_json(&read), as_json(&written));
    assert_eq!(read[0].stream_id.as_str(), at_limit);

    let beyond = format!("{at_limit}x");
    let refused = store
        .append(
            &StreamId::from(beyond.as_str()),
            ExpectedVersion::Any,
            numbered_batch(0, 1),
        )
        .await;
    match refused {
        Err(StoreError::InvalidStreamId { stream_id, reason }) => {
            assert_eq!(stream_id.as_str(), beyond);
            assert_eq!(
                reason,
                "a stream id may have at most 2048 bytes; this one has 2049"
            );
        }
        other => panic!("expected InvalidStreamId, got {other:?}"),
    }
    let with_nul = store
        .append(
            &StreamId::from("nul\0inside"),
            ExpectedVersion::Any,
            numbered_batch(0, 1),
        )
        .await;
    assert!(
        matches!(with_nul, Err(StoreError::InvalidStreamId { .. })),
        "got {with_nul:?}"
    );
}

#[tokio::test]
async fn like_wildcards_in_stream_ids_match_only_themselves() {
    let store = fresh_store().await;
    let ids = [
        "a", "ab", "a%", "a_", "a%b", "a_b", "%", "_", "a\\%", "a\\_", "A", "a ", "%a%", "__",
    ];
    for (n, id) in ids.iter().enumerate() {
        store
            .append(
                &StreamId::from(*id),
                ExpectedVersion::NoStream,
                vec![numbered(n as u64)],
            )
            .await
            .unwrap_or_else(|e| panic!("append to {id:?}: {e}"));
    }
    for (n, id) in ids.iter().enumerate() {
        let stream = StreamId::from(*id);
        let read = store.read_stream(&stream, 1, 10).await.unwrap();
        assert_eq!(read.len(), 1, "stream {id:?} reads only its own event");
        assert_eq!(read[0].stream_id.as_str(), *id);
        assert_eq!(
            read[0].data.to_value().unwrap(),
            serde_json::json!({ "n": n })
        );
        assert_eq!(store.stream_version(&stream).await.unwrap(), 1, "{id:?}");
    }
    // Expectations and snapshots match literally too.
    store
        .append(
            &StreamId::from("a%"),
            ExpectedVersion::Exact(1),
            vec![numbered(99)],
        )
        .await
        .unwrap();
    assert_eq!(
        store.stream_version(&StreamId::from("a%")).await.unwrap(),
        2
    );
    assert_eq!(
        store.stream_version(&StreamId::from("ab")).await.unwrap(),
        1
    );
    assert_eq!(
        store.stream_version(&StreamId::from("a%b")).await.unwrap(),
        1
    );
    assert!(store
        .read_stream(&StreamId::from("a%%"), 1, 10)
        .await
        .unwrap()
        .is_empty());
    assert!(store
        .read_stream(&StreamId::from("b"), 1, 10)
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn a_ten_mebibyte_payload_round_trips_exactly() {
    let store = fresh_store().await;
    let unit = "plain text, \"quotes\", back\\slash, tab\t, newline\n, é, 漢字, 🦀 | ";
    let mut blob = String::with_capacity(10 * 1024 * 1024 + unit.len());
    while blob.len() < 10 * 1024 * 1024 {
        blob.push_str(unit);
    }
    let value = serde_json::json!({ "blob": blob, "size": blob.len() });
    let payload = Payload::from_value(&value);
    assert!(payload.len() > 10 * 1024 * 1024);
    let event = NewEvent::raw("Big", 1, payload, Metadata::new().with("kind", "big"));
    let stream = StreamId::from("big");
    let written = store
        .append(&stream, ExpectedVersion::NoStream, vec![event.clone()])
        .await
        .unwrap();
    assert_eq!(written[0].data.to_value().unwrap(), value);

    let read = store.read_stream(&stream, 1, 10).await.unwrap();
    assert_eq!(read.len(), 1);
    assert_eq!(read[0].event_id, event.event_id);
    assert_eq!(
        read[0].data.to_value().unwrap(),
        value,
        "the payload round-trips exactly"
    );
    assert_eq!(
        read[0].data.to_value().unwrap()["blob"]
            .as_str()
            .unwrap()
            .len(),
        blob.len()
    );
    assert_eq!(read[0].metadata, event.metadata);
    // Re-sending it is a retry, not a duplicate.
    let again = store
        .append(&stream, ExpectedVersion::NoStream, vec![event])
        .await
        .unwrap();
    assert_eq!(again[0].global_position, written[0].global_position);
    assert_eq!(store.stream_version(&stream).await.unwrap(), 1);
}

#[tokio::test]
async fn a_wrong_expected_version_names_stream_expected_and_actual() {
    let store = fresh_store().await;
    let x = StreamId::from("x");
    store
        .append(&x, ExpectedVersion::NoStream, numbered_batch(0, 2))
        .await
        .unwrap();

    let error = store
        .append(&x, ExpectedVersion::Exact(5), vec![numbered(2)])
        .await
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "wrong expected version on stream `x`: expected version 5, actual version 2"
    );
    assert!(matches!(
        error,
        StoreError::WrongExpectedVersion { ref stream_id, expected: ExpectedVersion::Exact(5), actual: 2 }
            if stream_id == &x
    ));
    let error = store
        .append(&x, ExpectedVersion::NoStream, vec![numbered(2)])
        .await
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "wrong expected version on stream `x`: expected no stream, actual version 2"
    );
    let error = store
        .append(
            &StreamId::from("y"),
            ExpectedVersion::StreamExists,
            vec![numbered(2)],
        )
        .await
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "wrong expected version on stream `y`: expected an existing stream, actual version 0"
    );
    assert_eq!(store.stream_version(&x).await.unwrap(), 2);
    assert!(store
        .read_stream(&StreamId::from("y"), 1, 10)
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn the_same_event_id_with_another_payload_is_a_duplicate_naming_where_it_is_stored() {
    let store = fresh_store().await;
    let x = StreamId::from("x");
    let written = store
        .append(&x, ExpectedVersion::NoStream, numbered_batch(0, 3))
        .await
        .unwrap();
    let stored = &written[1];
    let changed = numbered(1000).with_id(stored.event_id);

    let error = store
        .append(&x, ExpectedVersion::Any, vec![changed.clone()])
        .await
        .unwrap_err();
    match &error {
        StoreError::DuplicateEventId {
            event_id,
            stored_in,
            stored_version,
            reason,
        } => {
            assert_eq!(*event_id, stored.event_id);
            assert_eq!(stored_in, &x);
            assert_eq!(*stored_version, 2);
            assert_eq!(reason, "the stored event has other content or order");
        }
        other => panic!("expected DuplicateEventId, got {other:?}"),
    }
    assert_eq!(
        error.to_string(),
        format!(
            "event id {} is already stored in stream `x` at version 2, and this append differs \
             from that one: the stored event has other content or order",
            stored.event_id
        )
    );

    // The same id in another stream names the stream that holds it.
    let error = store
        .append(
            &StreamId::from("elsewhere"),
            ExpectedVersion::Any,
            vec![changed],
        )
        .await
        .unwrap_err();
    match &error {
        StoreError::DuplicateEventId {
            event_id,
            stored_in,
            stored_version,
            reason,
        } => {
            assert_eq!(*event_id, stored.event_id);
            assert_eq!(stored_in, &x);
            assert_eq!(*stored_version, 2);
            assert_eq!(reason, "the id belongs to another stream");
        }
        other => panic!("expected DuplicateEventId, got {other:?}"),
    }
    assert_eq!(store.stream_version(&x).await.unwrap(), 3);
    assert_eq!(
        store
            .stream_version(&StreamId::from("elsewhere"))
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        as_json(&store.read_stream(&x, 1, 10).await.unwrap()),
        as_json(&written)
    );
}
