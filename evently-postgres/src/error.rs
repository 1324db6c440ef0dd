//! The store's errors, from the database's: an append's refusals as typed
//! [`StoreError`]s, and connection trouble (worth a retry) told from the
//! rest.

use evently_core::{CommandRecord, ExpectedVersion, StoreError, StreamId};

/// Whether `error` is a unique violation of `constraint`.
pub(crate) fn is_unique_violation(error: &sqlx::Error, constraint: &str) -> bool {
    matches!(error, sqlx::Error::Database(db)
        if db.code().as_deref() == Some("23505") && db.constraint() == Some(constraint))
}

/// The typed error for a refusal `append_events()` raised (by SQLSTATE,
/// with its detail and message), if it is one.
pub(crate) fn append_refusal(
    code: &str,
    detail: &str,
    message: &str,
    stream_id: &StreamId,
    expected: ExpectedVersion,
    command: Option<&CommandRecord>,
) -> Option<StoreError> {
    // A refusal whose detail does not parse is no refusal we know: `None`,
    // so the caller keeps the database's own error (with its text) rather
    // than a typed error with invented ids or versions.
    let json = || serde_json::from_str::<serde_json::Value>(detail).ok();
    let stream = |d: &serde_json::Value| d["stream_id"].as_str().map(StreamId::from);
    Some(match code {
        "ESWEV" => StoreError::WrongExpectedVersion {
            stream_id: stream_id.clone(),
            expected,
            actual: detail.parse().ok()?,
        },
        "ESDUP" => {
            let d = json()?;
            StoreError::DuplicateEventId {
                event_id: d["event_id"].as_str()?.parse().ok()?,
                stored_in: stream(&d)?,
                stored_version: d["stream_version"].as_u64()?,
                reason: d["reason"].as_str()?.to_owned(),
            }
        }
        "ESCMD" => {
            let d = json()?;
            StoreError::CommandAlreadyExecuted {
                command_id: command?.command_id,
                stream_id: stream(&d)?,
                first_version: d["first_version"].as_u64()?,
                last_version: d["last_version"].as_u64()?,
            }
        }
        "ESCLS" => StoreError::StreamClosed {
            stream_id: stream_id.clone(),
        },
        "ESINV" => StoreError::InvalidAppend {
            stream_id: stream_id.clone(),
            reason: message.to_owned(),
        },
        // The checks of `evently_core::limits` refuse these before they reach
        // the server; a refusal that still arrives says what it is.
        "22003" => StoreError::VersionOverflow {
            stream_id: stream_id.clone(),
            version: 0,
            events: 0,
        },
        "22021" | "22P05" => StoreError::InvalidAppend {
            stream_id: stream_id.clone(),
            reason: format!("PostgreSQL cannot store a character of this append: {message}"),
        },
        "22P02" => StoreError::InvalidAppend {
            stream_id: stream_id.clone(),
            reason: format!("a payload or the metadata is not valid JSON: {message}"),
        },
        "54000" => StoreError::InvalidAppend {
            stream_id: stream_id.clone(),
            reason: format!("a value of this append is larger than PostgreSQL takes: {message}"),
        },
        _ => return None,
    })
}

/// Maps an error of `append_events(...)` to the store's typed errors.
pub(crate) fn append_error(
    error: sqlx::Error,
    stream_id: &StreamId,
    expected: ExpectedVersion,
    command: Option<&CommandRecord>,
) -> StoreError {
    if let sqlx::Error::Database(db) = &error {
        let detail = db
            .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
            .and_then(|pg| pg.detail())
            .unwrap_or_default();
        if let Some(code) = db.code() {
            if let Some(refused) =
                append_refusal(&code, detail, db.message(), stream_id, expected, command)
            {
                return refused;
            }
        }
        if is_unique_violation(&error, "events_event_id_key") {
            // Another append stored one of these ids while this one ran,
            // more than once in a row: sending the same append again tells
            // a retry (the first result) from a reuse (`DuplicateEventId`
            // naming the stored event).
            return StoreError::Unavailable {
                reason: format!(
                    "an event id of this append to `{stream_id}` was stored concurrently; \
                     send the same append again"
                ),
                source: Some(Box::new(error)),
            };
        }
    }
    unavailable_or_backend(error)
}

/// Connection trouble is `Unavailable` (retry may succeed); the rest is
/// `Backend`.
pub(crate) fn unavailable_or_backend(error: sqlx::Error) -> StoreError {
    if is_transient(&error) {
        StoreError::unavailable_from(error)
    } else {
        StoreError::Backend(Box::new(error))
    }
}

/// Connection trouble (an I/O error, no connection free in time), a
/// server shutting down or a terminated backend, a serialization failure
/// or a deadlock: trying again may succeed. A closed pool, a protocol
/// error, a TLS failure, a dropped database or a refused value are not:
/// retrying them fails the same way, forever.
pub(crate) fn is_transient(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            code.starts_with("08")
                || matches!(&*code, "57P01" | "57P02" | "57P03" | "57P05")
                || code == "40001"
                || code == "40P01"
        }),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unavailable_keeps_the_drivers_error_as_its_source() {
        let io = sqlx::Error::Io(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "reset by peer",
        ));
        let error = unavailable_or_backend(io);
        assert!(error.is_transient());
        let source = std::error::Error::source(&error).expect("a source");
        assert!(matches!(
            source.downcast_ref::<sqlx::Error>(),
            Some(sqlx::Error::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionReset
        ));
    }

    #[test]
    fn a_refusal_whose_detail_does_not_parse_invents_nothing() {
        let stream = StreamId::from("s-1");
        let refused = |code: &str, detail: &str| {
            append_refusal(
                code,
                detail,
                "refused",
                &stream,
                ExpectedVersion::Exact(3),
                None,
            )
        };
        assert!(refused("ESWEV", "not a number").is_none());
        assert!(refused("ESDUP", "{}").is_none());
        assert!(refused(
            "ESDUP",
            r#"{"event_id": "nil", "stream_id": "s", "stream_version": 1, "reason": "r"}"#
        )
        .is_none());
        assert!(
            refused(
                "ESCMD",
                r#"{"stream_id": "s", "first_version": 1, "last_version": 2}"#
            )
            .is_none(),
            "no command given"
        );
        assert!(matches!(
            refused("ESWEV", "7"),
            Some(StoreError::WrongExpectedVersion { actual: 7, .. })
        ));
        let id = uuid::Uuid::now_v7();
        let detail = format!(
            r#"{{"event_id": "{id}", "stream_id": "s-9", "stream_version": 4, "reason": "other content"}}"#
        );
        assert!(matches!(
            refused("ESDUP", &detail),
            Some(StoreError::DuplicateEventId { event_id, stored_version: 4, .. }) if event_id == id
        ));
    }

    #[test]
    fn only_connection_trouble_is_transient() {
        let io = sqlx::Error::Io(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "reset",
        ));
        assert!(is_transient(&io));
        assert!(is_transient(&sqlx::Error::PoolTimedOut));
        assert!(!is_transient(&sqlx::Error::PoolClosed));
        assert!(!is_transient(&sqlx::Error::Protocol("garbled".into())));
        assert!(!is_transient(&sqlx::Error::WorkerCrashed));
        assert!(!is_transient(&sqlx::Error::RowNotFound));
        assert!(!unavailable_or_backend(sqlx::Error::PoolClosed).is_transient());
    }
}
