//! Why a store could not open, and SQLite's errors as the store's.

use std::path::PathBuf;
use std::time::Duration;

use evently_core::StoreError;

/// Why [`crate::SqliteEventStoreBuilder::open`] failed. Each names the
/// file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SetupError {
    /// The file's directory does not exist (it is not created for you).
    #[error("cannot open the event store {path}: its directory does not exist")]
    MissingDirectory {
        /// The file.
        path: PathBuf,
    },
    /// The file (or its directory, for the write-ahead log) is read-only.
    #[error(
        "cannot open the event store {path}: the file or its directory is read-only ({source})"
    )]
    ReadOnly {
        /// The file.
        path: PathBuf,
        /// SQLite's error.
        #[source]
        source: sqlx::Error,
    },
    /// The file exists and is not an SQLite database.
    #[error("cannot open the event store {path}: the file is not an SQLite database")]
    NotADatabase {
        /// The file.
        path: PathBuf,
    },
    /// Another process held the file's write lock for longer than the busy
    /// time-out.
    #[error("cannot open the event store {path}: another process held it locked for more than {waited:?}")]
    Locked {
        /// The file.
        path: PathBuf,
        /// The busy time-out waited.
        waited: Duration,
    },
    /// The file was written by a newer version of this crate.
    #[error("the event store {path} has schema version {found}, newer than this build's {known}: upgrade evently-sqlite")]
    SchemaNewer {
        /// The file.
        path: PathBuf,
        /// Its schema version.
        found: i64,
        /// The newest this build knows.
        known: i64,
    },
    /// Anything else SQLite said.
    #[error("cannot open the event store {path}: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// SQLite's error.
        #[source]
        source: sqlx::Error,
    },
}

/// SQLite's primary result code of an error, when it is one.
pub(crate) fn code(e: &sqlx::Error) -> Option<i64> {
    match e {
        sqlx::Error::Database(db) => db
            .code()
            .and_then(|c| c.parse::<i64>().ok())
            .map(|c| c & 0xff),
        _ => None,
    }
}

pub(crate) const SQLITE_BUSY: i64 = 5;
pub(crate) const SQLITE_LOCKED: i64 = 6;
pub(crate) const SQLITE_READONLY: i64 = 8;
pub(crate) const SQLITE_CANTOPEN: i64 = 14;
pub(crate) const SQLITE_NOTADB: i64 = 26;

/// An error opening `path`, typed by its cause.
pub(crate) fn setup(path: &std::path::Path, busy: Duration, e: sqlx::Error) -> SetupError {
    let path = path.to_owned();
    match code(&e) {
        Some(SQLITE_NOTADB) => SetupError::NotADatabase { path },
        Some(SQLITE_BUSY | SQLITE_LOCKED) => SetupError::Locked { path, waited: busy },
        Some(SQLITE_READONLY) => SetupError::ReadOnly { path, source: e },
        Some(SQLITE_CANTOPEN)
            if path
                .parent()
                .is_some_and(|d| !d.as_os_str().is_empty() && !d.exists()) =>
        {
            SetupError::MissingDirectory { path }
        }
        Some(SQLITE_CANTOPEN) => SetupError::ReadOnly { path, source: e },
        _ => SetupError::Open { path, source: e },
    }
}

/// A database error during an operation, as the store's error.
pub(crate) fn store(e: sqlx::Error) -> StoreError {
    match code(&e) {
        Some(SQLITE_BUSY | SQLITE_LOCKED) => StoreError::unavailable_from(e),
        _ => match e {
            sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => {
                StoreError::unavailable_from(e)
            }
            other => StoreError::Backend(Box::new(other)),
        },
    }
}
