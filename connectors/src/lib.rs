//! inlet-connectors: where records come from and how they decode.
//!
//! File sources: [`local::LocalDirectory`], [`s3::S3Prefix`] (listed), [`sqs::S3Notifications`]
//! (S3 event notifications on SQS). Extractors: [`rest::RestExtractor`] (an HTTP API, page by
//! page), [`postgres::PostgresExtractor`] (a PostgreSQL table: full, incremental or CDC). Formats: [`csv::CsvFormat`], [`ndjson::NdjsonFormat`], [`parquet::ParquetFormat`].
//! [`Connectors`] builds them from the pipeline file for the engine's run loop. Every failure
//! is an [`Error`] with a kind and whether to retry.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod csv;
mod error;
mod json;
mod lines;
pub mod local;
pub mod ndjson;
pub mod parquet;
pub mod postgres;
pub mod rest;
pub mod s3;
pub mod sqs;
mod text;

#[cfg(test)]
mod golden;
#[cfg(test)]
mod typed_check;

use std::path::Path;
use std::sync::Arc;

pub use error::Error;
use inlet_engine::config::{
    CleanSource, Discovery, FileFormat, FilesSource, NdjsonOptions, SourceConfig, resolve_path,
};
use inlet_engine::run::Pipeline;
use inlet_engine::source::{FileSource, Format, Source};
use inlet_engine::{EngineError, Result};

/// What a source does with a file once the commit holding it succeeded (`clean_source`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cleanup {
    Off,
    Delete,
    /// Move under this directory or `s3://` prefix, keeping the file's path under the source.
    Move(String),
}

/// The connectors this crate provides.
pub struct Connectors;

impl inlet_engine::run::Connectors for Connectors {
    fn source(&self, name: &str, pipeline: &Pipeline) -> Result<Source> {
        let error = |e: Error| EngineError::Source { source_name: name.to_owned(), error: e.into() };
        match pipeline.source_config(name)? {
            SourceConfig::Files(config) => Ok(Source::Files {
                files: files_source(config, &pipeline.base_dir).map_err(error)?,
                format: files_format(config),
            }),
            SourceConfig::Rest(_) => {
                Ok(Source::Extractor(Arc::new(rest::RestExtractor::new(name, pipeline).map_err(error)?)))
            }
            SourceConfig::Postgres(_) => {
                Ok(Source::Extractor(Arc::new(postgres::PostgresExtractor::new(name, pipeline).map_err(error)?)))
            }
        }
    }

    fn format(&self, name: &str, pipeline: &Pipeline) -> Result<Arc<dyn Format>> {
        Ok(match pipeline.source_config(name)? {
            SourceConfig::Files(config) => files_format(config),
            // A quarantined record of an API is the record's JSON object.
            // A quarantined row of a database is the row's JSON object.
            SourceConfig::Rest(_) | SourceConfig::Postgres(_) => {
                Arc::new(ndjson::NdjsonFormat::new(NdjsonOptions::default()))
            }
        })
    }
}

/// The position an extractor's table committed, read as the extractor's own type; `start`
/// before the first commit. A position this version cannot read is an internal error.
pub(crate) fn committed_position<T: serde::de::DeserializeOwned>(
    source: &str,
    from: Option<serde_json::Value>,
    start: impl FnOnce() -> T,
) -> std::result::Result<T, Error> {
    match from {
        Some(value) => serde_json::from_value(value).map_err(|e| {
            Error::Internal(format!("source `{source}`: the committed position is not one this version reads: {e}"))
        }),
        None => Ok(start()),
    }
}

/// The file source `config` describes, rooted at `base_dir` (the pipeline file's).
fn files_source(config: &FilesSource, base_dir: &Path) -> std::result::Result<Arc<dyn FileSource>, Error> {
    let pattern = config.pattern.as_ref().map(|p| p.get_ref().as_str());
    let move_to = config.clean_source_move_to.as_deref().unwrap_or_default();
    let cleanup = match config.clean_source {
        CleanSource::Off => Cleanup::Off,
        CleanSource::Delete => Cleanup::Delete,
        // A prefix in the source's bucket, or a directory relative to the pipeline file.
        CleanSource::Move if config.on_s3() => Cleanup::Move(move_to.to_owned()),
        CleanSource::Move => Cleanup::Move(resolve_path(base_dir, move_to).display().to_string()),
    };
    if config.on_s3() {
        let source = s3::S3Prefix::new(&config.path, pattern, config.recursive)?.with_cleanup(cleanup)?;
        return match (config.discovery, &config.queue_url) {
            (Discovery::Notifications, Some(queue)) => {
                let reconcile = std::time::Duration::from_secs(config.reconcile_interval_secs);
                let visibility = std::time::Duration::from_secs(
                    config.visibility_timeout_secs.unwrap_or(inlet_engine::config::DEFAULT_VISIBILITY_TIMEOUT_SECS),
                );
                let per_listing = config.max_files_per_commit;
                Ok(Arc::new(sqs::S3Notifications::new(source, queue, reconcile, visibility, per_listing)?))
            }
            _ => Ok(Arc::new(source)),
        };
    }
    let root = resolve_path(base_dir, &config.path);
    Ok(Arc::new(local::LocalDirectory::new(root, pattern, config.recursive)?.with_cleanup(cleanup)))
}

/// How the files of `config` decode.
fn files_format(config: &FilesSource) -> Arc<dyn Format> {
    match config.format {
        FileFormat::Csv => Arc::new(csv::CsvFormat::new(config.csv.clone())),
        FileFormat::Ndjson => Arc::new(ndjson::NdjsonFormat::new(config.ndjson.clone())),
        FileFormat::Parquet => Arc::new(parquet::ParquetFormat),
    }
}
