//! inlet-engine: the pipeline file, the run loop, Delta table writes and the file ledger.
//!
//! Connectors (`inlet-connectors`) implement [`source::Source`] and [`source::Format`];
//! the engine decides what is new ([`ledger`]), conforms what was decoded to the table
//! ([`conform`]) and publishes it exactly once ([`table`]), driven by [`run`].

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod audit;
pub mod backfill;
pub mod config;
pub mod conform;
pub mod dag;
pub mod error;
pub mod expect;
pub mod ledger;
pub mod query;
pub mod replay;
pub mod run;
pub mod scd2;
pub mod schedule;
pub mod schema;
pub mod source;
pub mod status;
pub mod table;
pub mod text_cast;
pub mod transform;

pub use error::{EngineError, ErrorKind, Result};
