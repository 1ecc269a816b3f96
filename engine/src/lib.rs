//! inlet-engine: the pipeline file, the run loop, Delta table writes and where each source
//! stands.
//!
//! Connectors (`inlet-connectors`) implement [`source::FileSource`], [`source::Extractor`]
//! and [`source::Format`]; the engine reads where a source stands from its table
//! ([`ingest::position`], through the one reader of the log, [`log`]), conforms what was
//! decoded to the table ([`conform`]) and publishes it exactly once ([`table`]), driven by
//! [`run`] through [`ingest`] (sources) and [`transform`] (derived tables).

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod audit;
pub mod backfill;
pub mod column_lineage;
pub mod config;
pub mod conform;
pub mod dag;
pub mod error;
pub mod expect;
pub mod ingest;
pub mod log;
pub mod quarantine;
pub mod query;
pub mod replay;
pub mod run;
pub mod schedule;
pub mod schema;
pub mod source;
pub mod status;
pub mod table;
pub mod text_cast;
pub mod transform;
pub mod upkeep;

pub use error::{EngineError, ErrorKind, Result};
pub use ingest::ledger;
