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
    /// A source's connector failed; its error says who has to act.
    #[error("source `{source_name}`: {error}")]
    Source {
        source_name: String,
        #[source]
        error: crate::source::SourceError,
    },
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
    /// A query over tables failed reading them (storage, network): not the SQL's fault.
    #[error("table `{table}`: reading failed: {source}")]
    Storage {
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
    /// A version asked for (`--as-of`) can no longer be read: its commit expired from the
    /// log, or a file of it was vacuumed.
    #[error("table `{table}`: {message}")]
    TimeTravel { table: String, message: String },
    /// `inlet optimize` or `inlet vacuum` refused (no table, a retention too short).
    #[error("table `{table}`: {message}")]
    Maintenance { table: String, message: String },
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
    /// Another writer's commit stands in the way of this one (a maintenance commit that lost
    /// its races); trying again later may succeed.
    #[error("table `{table}`: conflict with another writer: {message}")]
    Conflict { table: String, message: String },
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
            | EngineError::TimeTravel { .. }
            | EngineError::Maintenance { .. }
            | EngineError::GateFailed { .. } => ErrorKind::User,
            EngineError::ReadConfig { source, .. } if source.kind() == std::io::ErrorKind::NotFound => ErrorKind::User,
            EngineError::Source { error, .. } => error.kind(),
            EngineError::ReadConfig { .. }
            | EngineError::Storage { .. }
            | EngineError::Delta { .. }
            | EngineError::ObjectStore { .. }
            | EngineError::Conflict { .. }
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
            EngineError::ConcurrentCommit { .. } | EngineError::Conflict { .. } => true,
            EngineError::Storage { source, .. } => storage_failure(source) != Some(Lasting::Permanent),
            EngineError::Source { error, .. } => error.is_retryable(),
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
            EngineError::ConcurrentCommit { .. } | EngineError::Conflict { .. } => true,
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

    /// A failure of a query's SQL, or of reading its tables (then external and retryable).
    pub(crate) fn sql(table: impl Into<String>, source: DataFusionError) -> Self {
        let table = table.into();
        if is_io(&source) {
            EngineError::Storage { table, source: Box::new(source) }
        } else {
            EngineError::Sql { table, source: Box::new(source) }
        }
    }

    /// A failure of a query inlet wrote, or of reading its tables (then external).
    pub(crate) fn query(table: impl Into<String>, source: DataFusionError) -> Self {
        let table = table.into();
        if is_io(&source) {
            EngineError::Storage { table, source: Box::new(source) }
        } else {
            EngineError::Query { table, source: Box::new(source) }
        }
    }

    pub(crate) fn arrow(context: impl Into<String>, source: arrow::error::ArrowError) -> Self {
        EngineError::Arrow { context: context.into(), source }
    }
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;

use deltalake::datafusion::error::DataFusionError;

/// Whether a DataFusion error is, at its root, a failure to read or write storage (an
/// object store or file system error, or a Delta log read), wherever DataFusion wrapped it.
pub(crate) fn is_io(err: &DataFusionError) -> bool {
    storage_failure(err).is_some()
}

/// How lasting a storage failure is: a file that is not there (vacuumed under a time travel
/// query) or a store that refuses the credentials is not cured by trying again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lasting {
    Transient,
    Permanent,
}

/// The storage failure at the root of a DataFusion error, if that is what it is.
pub(crate) fn storage_failure(err: &DataFusionError) -> Option<Lasting> {
    match err {
        DataFusionError::ObjectStore(store) => Some(store_lasting(store)),
        DataFusionError::IoError(io) => Some(io_lasting(io)),
        DataFusionError::ArrowError(arrow, _) => arrow_failure(arrow),
        DataFusionError::ParquetError(parquet) => parquet_failure(parquet),
        DataFusionError::External(inner) => external_failure(inner.as_ref()),
        DataFusionError::Context(_, inner) | DataFusionError::Diagnostic(_, inner) => storage_failure(inner),
        DataFusionError::Shared(inner) => storage_failure(inner),
        DataFusionError::Collection(errors) => errors.iter().find_map(storage_failure),
        _ => None,
    }
}

fn store_lasting(err: &object_store::Error) -> Lasting {
    match err {
        object_store::Error::NotFound { .. }
        | object_store::Error::InvalidPath { .. }
        | object_store::Error::PermissionDenied { .. }
        | object_store::Error::Unauthenticated { .. } => Lasting::Permanent,
        _ => Lasting::Transient,
    }
}

fn io_lasting(err: &std::io::Error) -> Lasting {
    match err.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied => Lasting::Permanent,
        _ => Lasting::Transient,
    }
}

fn parquet_failure(err: &parquet::errors::ParquetError) -> Option<Lasting> {
    match err {
        parquet::errors::ParquetError::External(inner) => external_failure(inner.as_ref()),
        // DataFusion's Parquet reader turns a failed footer fetch into text
        // (`Failed to fetch metadata for file ...: Object Store error: ...`): the store's
        // error is known by the prefix DataFusion gives it, a missing object by its words.
        parquet::errors::ParquetError::General(message) if message.contains("Object Store error: ") => {
            Some(if message.contains("not found") { Lasting::Permanent } else { Lasting::Transient })
        }
        _ => None,
    }
}

fn arrow_failure(err: &arrow::error::ArrowError) -> Option<Lasting> {
    match err {
        arrow::error::ArrowError::IoError(_, io) => Some(io_lasting(io)),
        arrow::error::ArrowError::ExternalError(inner) => external_failure(inner.as_ref()),
        _ => None,
    }
}

/// A boxed error from inside a DataFusion plan: storage, or storage wrapped once more.
fn external_failure(err: &(dyn std::error::Error + Send + Sync + 'static)) -> Option<Lasting> {
    if let Some(store) = err.downcast_ref::<object_store::Error>() {
        return Some(store_lasting(store));
    }
    if let Some(io) = err.downcast_ref::<std::io::Error>() {
        return Some(io_lasting(io));
    }
    if let Some(inner) = err.downcast_ref::<DataFusionError>() {
        return storage_failure(inner);
    }
    if let Some(inner) = err.downcast_ref::<arrow::error::ArrowError>() {
        return arrow_failure(inner);
    }
    if let Some(inner) = err.downcast_ref::<parquet::errors::ParquetError>() {
        return parquet_failure(inner);
    }
    match err.downcast_ref::<deltalake::DeltaTableError>() {
        Some(deltalake::DeltaTableError::ObjectStore { source }) => Some(store_lasting(source)),
        Some(deltalake::DeltaTableError::Io { source }) => Some(io_lasting(source)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store_error() -> object_store::Error {
        object_store::Error::Generic { store: "S3", source: "connection reset".into() }
    }

    #[test]
    fn storage_failures_inside_a_query_are_external_and_retryable() {
        let wrapped = [
            DataFusionError::ObjectStore(Box::new(store_error())),
            DataFusionError::Context(
                "scanning".into(),
                Box::new(DataFusionError::ObjectStore(Box::new(store_error()))),
            ),
            DataFusionError::External(Box::new(store_error())),
            DataFusionError::ArrowError(
                Box::new(arrow::error::ArrowError::ExternalError(Box::new(store_error()))),
                None,
            ),
            DataFusionError::ParquetError(Box::new(parquet::errors::ParquetError::External(Box::new(store_error())))),
            DataFusionError::Shared(std::sync::Arc::new(DataFusionError::IoError(std::io::Error::other("eof")))),
            DataFusionError::External(Box::new(DataFusionError::ObjectStore(Box::new(store_error())))),
            // What DataFusion's Parquet reader makes of a footer it could not fetch.
            DataFusionError::ParquetError(Box::new(parquet::errors::ParquetError::General(format!(
                "Failed to fetch metadata for file a.parquet: {}",
                DataFusionError::ObjectStore(Box::new(store_error()))
            )))),
        ];
        for err in wrapped {
            let text = err.to_string();
            let engine = EngineError::sql("silver.orders", err);
            assert!(matches!(engine, EngineError::Storage { .. }), "{text}");
            assert_eq!(engine.kind(), ErrorKind::External, "{text}");
            assert!(engine.is_retryable(), "{text}");
            assert!(engine.to_string().contains("silver.orders"), "{engine}");
        }
    }

    #[test]
    fn a_file_that_is_gone_is_not_retried() {
        let gone = || object_store::Error::NotFound { path: "a.parquet".into(), source: "404".into() };
        for err in [
            DataFusionError::ObjectStore(Box::new(gone())),
            DataFusionError::External(Box::new(gone())),
            DataFusionError::ParquetError(Box::new(parquet::errors::ParquetError::General(format!(
                "Failed to fetch metadata for file a.parquet: {}",
                DataFusionError::ObjectStore(Box::new(gone()))
            )))),
        ] {
            let text = err.to_string();
            let engine = EngineError::sql("silver.orders", err);
            assert_eq!(engine.kind(), ErrorKind::External, "{text}");
            assert!(!engine.is_retryable(), "{text}");
        }
    }

    #[test]
    fn a_wrong_query_stays_a_user_error() {
        let corrupt =
            parquet::errors::ParquetError::General("Failed to fetch metadata for file a.parquet: bad footer".into());
        assert!(!is_io(&DataFusionError::ParquetError(Box::new(corrupt))));
        let engine = EngineError::sql("silver.orders", DataFusionError::Plan("no column `x`".into()));
        assert_eq!(engine.kind(), ErrorKind::User);
        assert!(!engine.is_retryable());
        let engine = EngineError::query("silver.orders", DataFusionError::Execution("division by zero".into()));
        assert_eq!(engine.kind(), ErrorKind::Internal);
    }
}
