//! PostgreSQL sources: a table (or query) loaded whole, by a cursor column, or from the
//! write-ahead log, every page handing the engine the position it stands at.
//!
//! - `full` ([`load`]): each run reads the table in one `REPEATABLE READ` snapshot, shared
//!   with the source's other tables ([`shared`]), in primary-key order, a chunk per binary `COPY` ([`scan`]); the key of the last row landed
//!   is committed with it, so a killed load resumes at its next row.
//! - `incremental` ([`load`]): rows whose cursor reached the last one committed (less
//!   `lag_secs`), in cursor order; rows read again are dropped by key and cursor.
//! - `cdc` ([`cdc`]): a logical replication slot (`pgoutput`) and a publication of the
//!   table, created when absent; the table is read once from a snapshot, then every change
//!   from the slot, whole transactions at a time. The slot is moved to the position of the
//!   table's latest commit when the next run starts: never past what is in the table.
//!
//! Values are decoded from their binary form straight into Arrow ([`types`], [`rows`]).

mod catalog;
mod cdc;
mod connect;
mod load;
mod pgoutput;
mod position;
mod rows;
mod scan;
mod shared;
mod slot;
mod types;

use std::sync::Arc;

use inlet_engine::config::{PostgresMode, PostgresSource, SourceConfig};
use inlet_engine::run::Pipeline;
use inlet_engine::source::{Extraction, Extractor, SourceError};
use serde_json::Value;

pub use self::connect::Database;
use self::position::Position;
use crate::Error;

/// Rows per page handed to the engine.
const PAGE_ROWS: usize = 32_768;

/// A PostgreSQL table or query as an extractor of the engine.
pub struct PostgresExtractor {
    name: String,
    config: Arc<PostgresSource>,
    db: Database,
}

impl PostgresExtractor {
    /// The extractor of source `name` of `pipeline`, its URL read from the environment.
    pub fn new(name: &str, pipeline: &Pipeline) -> Result<PostgresExtractor, Error> {
        let config = match pipeline.config.sources.get(name) {
            Some(SourceConfig::Postgres(pg)) => pg.clone(),
            _ => return Err(Error::Config { message: format!("`{name}` is not a `postgres` source") }),
        };
        let db = Database::new(name, &config.url, &pipeline.env)?;
        Ok(PostgresExtractor { name: name.to_owned(), config: Arc::new(config), db })
    }

    /// What rows of this source name as their `_source_url`: the database and the table.
    fn unit(&self) -> String {
        let what = self.config.table.as_ref().map_or_else(|| "query".to_owned(), ToString::to_string);
        format!("postgres://{}/{what}", self.db.name)
    }
}

#[async_trait::async_trait]
impl Extractor for PostgresExtractor {
    async fn start(&self, from: Option<Value>) -> Result<Box<dyn Extraction>, SourceError> {
        let position = crate::committed_position(&self.name, from, || Position {
            format: position::FORMAT,
            ..Position::default()
        })?;
        let context =
            Context { name: self.name.clone(), config: self.config.clone(), db: self.db.clone(), unit: self.unit() };
        Ok(match self.config.mode {
            PostgresMode::Full | PostgresMode::Incremental => Box::new(load::Loading::start(context, position).await?),
            PostgresMode::Cdc => Box::new(cdc::Capture::start(context, position).await?),
        })
    }

    /// A load or CDC from scratch: a new snapshot (through a new slot for CDC; the old one is
    /// dropped when it opens). CDC also remembers the table's version it replaces: the keys
    /// live there that the new snapshot lacks were deleted meanwhile, and land as deletes.
    fn restart(&self, from: Option<Value>, table_version: Option<i64>) -> Result<Option<Value>, SourceError> {
        let old: Position = crate::committed_position(&self.name, from, || Position {
            format: position::FORMAT,
            ..Position::default()
        })?;
        let resnapshot = match self.config.mode {
            // A restart that did not finish still owes the deletes of the log it replaced.
            PostgresMode::Cdc if old.resnapshot.is_some() => old.resnapshot,
            PostgresMode::Cdc => table_version.map(|before_version| position::Resnapshot {
                before_version,
                lsn: old.stream.as_ref().map_or(0, |s| s.lsn),
            }),
            PostgresMode::Full | PostgresMode::Incremental => None,
        };
        let position = Position { format: position::FORMAT, loads: old.loads, resnapshot, ..Position::default() };
        let value = serde_json::to_value(&position)
            .map_err(|e| Error::Internal(format!("source `{}`: position: {e}", self.name)))?;
        Ok(Some(value))
    }
}

/// What every kind of extraction knows.
#[derive(Clone)]
struct Context {
    name: String,
    config: Arc<PostgresSource>,
    db: Database,
    /// The rows' `_source_url`.
    unit: String,
}
