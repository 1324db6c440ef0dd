//! What a command says when it fails, and the exit code scripts see.

use std::fmt;
use std::process::ExitCode;

use evently_core::StoreError;
use evently_postgres::SetupError;

/// The exit codes `es` returns; scripts may rely on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    /// Done.
    Ok = 0,
    /// Anything else went wrong (the message says what).
    Failed = 1,
    /// The command line is wrong: an unknown flag, a malformed URL or
    /// schema name, a value that does not parse.
    Usage = 2,
    /// What was asked for does not exist: a stream, a projection, a
    /// schema, a file.
    NotFound = 3,
    /// The store cannot be reached (down, refused, timed out).
    Unavailable = 4,
    /// A check failed: the store differs from an export, a stream's
    /// versions have a gap, or an export file is truncated or was changed.
    Mismatch = 5,
    /// The store refused: the projection is running, the import target
    /// holds other events, the projection is not registered in this binary.
    Refused = 6,
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> ExitCode {
        ExitCode::from(exit as u8)
    }
}

/// A failed command: its exit code and a message that says what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CliError {
    /// The exit code.
    pub exit: Exit,
    /// The message, printed after `error: `.
    pub message: String,
}

impl CliError {
    /// An error with an exit code.
    pub fn new(exit: Exit, message: impl Into<String>) -> Self {
        CliError {
            exit,
            message: message.into(),
        }
    }

    pub(crate) fn usage(message: impl Into<String>) -> Self {
        Self::new(Exit::Usage, message)
    }

    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Self::new(Exit::NotFound, message)
    }

    pub(crate) fn mismatch(message: impl Into<String>) -> Self {
        Self::new(Exit::Mismatch, message)
    }

    pub(crate) fn refused(message: impl Into<String>) -> Self {
        Self::new(Exit::Refused, message)
    }

    pub(crate) fn failed(message: impl Into<String>) -> Self {
        Self::new(Exit::Failed, message)
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CliError {}

impl From<StoreError> for CliError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable { .. } => CliError::new(
                Exit::Unavailable,
                format!("{e}; is the database running and reachable? (`pg_isready`)"),
            ),
            other => CliError::failed(other.to_string()),
        }
    }
}

impl From<SetupError> for CliError {
    fn from(e: SetupError) -> Self {
        match &e {
            SetupError::Connect(source) => CliError::new(
                Exit::Unavailable,
                format!("cannot connect to PostgreSQL: {source}; is it running, and is --url (DATABASE_URL) right?"),
            ),
            SetupError::InvalidSchemaName(_) => CliError::usage(e.to_string()),
            SetupError::SchemaMissing { .. } => CliError::not_found(format!(
                "{e}; check --schema (ES_SCHEMA), or run `es import` to create one"
            )),
            _ => CliError::failed(e.to_string()),
        }
    }
}

impl From<sqlx::Error> for CliError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => {
                CliError::new(
                    Exit::Unavailable,
                    format!("the database stopped answering: {e}"),
                )
            }
            _ => CliError::failed(format!("the database failed: {e}")),
        }
    }
}

impl From<std::io::Error> for CliError {
    fn from(e: std::io::Error) -> Self {
        CliError::failed(format!("cannot write the output: {e}"))
    }
}
