//! inlet-connectors: where bytes come from and how they decode.
//!
//! Sources: [`local::LocalDirectory`], [`s3::S3Prefix`] (listed), [`sqs::S3Notifications`]
//! (S3 event notifications on SQS). Formats: [`csv::CsvFormat`], [`ndjson::NdjsonFormat`],
//! [`parquet::ParquetFormat`]. [`Connectors`] builds them from the pipeline file for the
//! engine's run loop.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod csv;
pub mod local;
pub mod ndjson;
pub mod parquet;
pub mod s3;
pub mod sqs;
mod text;

#[cfg(test)]
mod golden;

use std::path::Path;
use std::sync::Arc;

use inlet_engine::config::{CleanSource, Discovery, FileFormat, FilesSource, resolve_path};
use inlet_engine::source::{Format, Source};
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
    fn files_source(&self, name: &str, config: &FilesSource, base_dir: &Path) -> Result<Arc<dyn Source>> {
        let pattern = config.pattern.as_ref().map(|p| p.get_ref().as_str());
        let error = |e: inlet_engine::source::FileError| EngineError::ListSource {
            source_name: name.to_owned(),
            path: config.path.clone(),
            message: e.message,
        };
        let move_to = config.clean_source_move_to.as_deref().unwrap_or_default();
        let cleanup = match config.clean_source {
            CleanSource::Off => Cleanup::Off,
            CleanSource::Delete => Cleanup::Delete,
            // A prefix in the source's bucket, or a directory relative to the pipeline file.
            CleanSource::Move if config.on_s3() => Cleanup::Move(move_to.to_owned()),
            CleanSource::Move => Cleanup::Move(resolve_path(base_dir, move_to).display().to_string()),
        };
        if config.on_s3() {
            let source = s3::S3Prefix::new(&config.path, pattern, config.recursive)
                .and_then(|s| s.with_cleanup(cleanup))
                .map_err(error)?;
            return match (config.discovery, &config.queue_url) {
                (Discovery::Notifications, Some(queue)) => {
                    let reconcile = std::time::Duration::from_secs(config.reconcile_interval_secs);
                    let visibility = std::time::Duration::from_secs(
                        config.visibility_timeout_secs.unwrap_or(inlet_engine::config::DEFAULT_VISIBILITY_TIMEOUT_SECS),
                    );
                    let per_listing = config.max_files_per_commit;
                    Ok(Arc::new(
                        sqs::S3Notifications::new(source, queue, reconcile, visibility, per_listing).map_err(error)?,
                    ))
                }
                _ => Ok(Arc::new(source)),
            };
        }
        let root = resolve_path(base_dir, &config.path);
        Ok(Arc::new(local::LocalDirectory::new(root, pattern, config.recursive).map_err(error)?.with_cleanup(cleanup)))
    }

    fn files_format(&self, config: &FilesSource) -> Result<Arc<dyn Format>> {
        Ok(match config.format {
            FileFormat::Csv => Arc::new(csv::CsvFormat::new(config.csv.clone())),
            FileFormat::Ndjson => Arc::new(ndjson::NdjsonFormat::new(config.ndjson.clone())),
            FileFormat::Parquet => Arc::new(parquet::ParquetFormat),
        })
    }
}
