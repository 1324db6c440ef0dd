//! Why a store's rebuild of a read model did not switch over: the same
//! refusals on every store that rebuilds (PostgreSQL, SQLite).

use crate::error::StoreError;
use crate::projection::ProjectionState;

/// Why a rebuild did not switch over.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RebuildError {
    /// The projection stopped or failed before it caught up; nothing was
    /// switched.
    #[error("the rebuild of `{name}` stopped before it caught up: {state:?}")]
    Stopped {
        /// The projection.
        name: String,
        /// Its state.
        state: ProjectionState,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The view's name is invalid, or its runner or table could not start.
    #[error(transparent)]
    View(#[from] crate::view::ViewError),
    /// The switch-over statements failed; the old read model still serves.
    #[error("the switch-over of `{name}` failed: {source}")]
    Switch {
        /// The projection.
        name: String,
        /// The database's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The name already has a checkpoint past zero: a projection of that
    /// name has written its read model, and replaying the log from zero
    /// would apply every event to it again. Nothing was changed. Rebuild
    /// under a new name into new tables, or force the rebuild (the store's
    /// `force_rebuild_projection`) after emptying the tables.
    #[error("projection `{name}` already has a checkpoint at position {position}: rebuilding it under that name would replay the log into its tables again (rebuild under a new name, or empty its tables and force the rebuild)")]
    CheckpointExists {
        /// The projection.
        name: String,
        /// Its checkpoint.
        position: u64,
    },
    /// An instance of a projection of that name is running (it holds the
    /// projection's lock or lease): it must stop before a rebuild under its
    /// name, forced or not. Nothing was changed.
    #[error("projection `{name}` is running: stop it before rebuilding under its name")]
    Running {
        /// The projection.
        name: String,
    },
}
