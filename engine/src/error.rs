//! The engine's error type.
//!
//! Every variant names what failed (file, table, version, key) and is classified by
//! [`ErrorKind`]: the CLI maps the kind to its exit code, and a scheduler decides retries
//! from [`EngineError::is_retryable`]. Bad rows are never errors: they are outcomes that go
//! to quarantine.

use std::path::PathBuf;

/// Who has to act on an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The pipeline file or the input is wrong: the user fixes it.
    User,
    /// A system outside inlet failed (file system, object store, network).
    External,
    /// A bug or a broken invariant inside inlet.
    Internal,
}

/// Errors of the engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot read pipeline file `{path}`: {source}")]
    ReadConfig { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Config { path: PathBuf, message: String },
    #[error("source `{source_name}`: cannot list `{path}`: {message}")]
    ListSource { source_name: String, path: String, message: String },
    #[error("source `{source_name}`: file `{file}` has new columns {columns:?} and `on_new_columns = \"fail\"`")]
    NewColumns { source_name: String, file: String, columns: Vec<String> },
    #[error("source `{source_name}`: file `{file}`: column `{column}` has type {found} but the table has {expected}")]
    IncompatibleColumn { source_name: String, file: String, column: String, found: String, expected: String },
    #[error("table `{table}` at `{location}`: {source}")]
    Delta {
        table: String,
        location: String,
        #[source]
        source: Box<deltalake::DeltaTableError>,
    },
    #[error("table `{table}`: query failed: {source}")]
    Query {
        table: String,
        #[source]
        source: Box<deltalake::datafusion::error::DataFusionError>,
    },
    #[error("table `{table}`: SQL: {source}")]
    Sql {
        table: String,
        #[source]
        source: Box<deltalake::datafusion::error::DataFusionError>,
    },
    #[error("table `{table}`: {message}")]
    Transform { table: String, message: String },
    #[error("table `{table}`: restore: {message}")]
    Restore { table: String, message: String },
    #[error("table `{table}`: expectation `{name}`: {message}")]
    Expectation { table: String, name: String, message: String },
    /// A quality gate failed: nothing was committed.
    #[error("table `{table}`: {summary}")]
    GateFailed { table: String, summary: String, report: Box<inlet_quality::GateReport> },
    #[error("table `{table}`: ledger of `{app_id}` cannot be reconciled: {message}")]
    Ledger { table: String, app_id: String, message: String },
    #[error(
        "table `{table}`: version {version} of `{app_id}` was committed by another writer while this run was working"
    )]
    ConcurrentCommit { table: String, app_id: String, version: i64 },
    #[error("table `{table}`: {message}")]
    Schema { table: String, message: String },
    #[error("arrow: {context}: {source}")]
    Arrow {
        context: String,
        #[source]
        source: arrow::error::ArrowError,
    },
    #[error("object store: `{path}`: {source}")]
    ObjectStore {
        path: String,
        #[source]
        source: Box<object_store::Error>,
    },
    #[error("internal: {0}")]
    Internal(String),
}

impl EngineError {
    /// Who has to act on this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            EngineError::Config { .. }
            | EngineError::NewColumns { .. }
            | EngineError::IncompatibleColumn { .. }
            | EngineError::Schema { .. }
            | EngineError::Sql { .. }
            | EngineError::Transform { .. }
            | EngineError::Expectation { .. }
            | EngineError::Restore { .. }
            | EngineError::GateFailed { .. } => ErrorKind::User,
            EngineError::ReadConfig { source, .. } if source.kind() == std::io::ErrorKind::NotFound => ErrorKind::User,
            EngineError::ReadConfig { .. }
            | EngineError::ListSource { .. }
            | EngineError::Delta { .. }
            | EngineError::ObjectStore { .. }
            | EngineError::ConcurrentCommit { .. } => ErrorKind::External,
            EngineError::Ledger { .. }
            | EngineError::Arrow { .. }
            | EngineError::Query { .. }
            | EngineError::Internal(_) => ErrorKind::Internal,
        }
    }

    /// Whether running the same thing again may succeed without a change by the user.
    pub fn is_retryable(&self) -> bool {
        match self {
            EngineError::ConcurrentCommit { .. } | EngineError::ListSource { .. } => true,
            EngineError::ObjectStore { source, .. } => !matches!(
                source.as_ref(),
                object_store::Error::NotFound { .. } | object_store::Error::InvalidPath { .. }
            ),
            EngineError::Delta { source, .. } => matches!(
                source.as_ref(),
                deltalake::DeltaTableError::VersionAlreadyExists(_)
                    | deltalake::DeltaTableError::ObjectStore { .. }
                    | deltalake::DeltaTableError::Io { .. }
            ),
            _ => false,
        }
    }

    /// Whether another writer committed first (counted apart from other failures).
    pub fn is_conflict(&self) -> bool {
        use deltalake::kernel::transaction::TransactionError;
        match self {
            EngineError::ConcurrentCommit { .. } => true,
            EngineError::Delta { source, .. } => match source.as_ref() {
                deltalake::DeltaTableError::VersionAlreadyExists(_) => true,
                deltalake::DeltaTableError::Transaction { source } => matches!(
                    source,
                    TransactionError::VersionAlreadyExists(_)
                        | TransactionError::CommitConflict(_)
                        | TransactionError::MaxCommitAttempts(_)
                ),
                _ => false,
            },
            _ => false,
        }
    }

    pub(crate) fn arrow(context: impl Into<String>, source: arrow::error::ArrowError) -> Self {
        EngineError::Arrow { context: context.into(), source }
    }
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;
