//! inlet-connectors: where bytes come from and how they decode.
//!
//! Sources: [`local::LocalDirectory`], [`s3::S3Prefix`]. Formats: [`csv::CsvFormat`], [`ndjson::NdjsonFormat`],
//! [`parquet::ParquetFormat`]. [`Connectors`] builds them from the pipeline file for the
//! engine's run loop.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod csv;
pub mod local;
pub mod ndjson;
pub mod parquet;
pub mod s3;
mod text;

#[cfg(test)]
mod golden;

use std::path::PathBuf;
use std::sync::Arc;

use inlet_engine::config::{FileFormat, FilesSource};
use inlet_engine::source::{Format, Source};
use inlet_engine::{EngineError, Result};

/// The connectors this crate provides.
pub struct Connectors;

impl inlet_engine::run::Connectors for Connectors {
    fn files_source(&self, name: &str, config: &FilesSource, root: PathBuf) -> Result<Arc<dyn Source>> {
        let pattern = config.pattern.as_ref().map(|p| p.get_ref().as_str());
        let error = |e: inlet_engine::source::FileError| EngineError::ListSource {
            source_name: name.to_owned(),
            path: config.path.clone(),
            message: e.message,
        };
        if config.path.starts_with("s3://") || config.path.starts_with("s3a://") {
            return Ok(Arc::new(s3::S3Prefix::new(&config.path, pattern, config.recursive).map_err(error)?));
        }
        Ok(Arc::new(local::LocalDirectory::new(root, pattern, config.recursive).map_err(error)?))
    }

    fn files_format(&self, config: &FilesSource) -> Result<Arc<dyn Format>> {
        Ok(match config.format {
            FileFormat::Csv => Arc::new(csv::CsvFormat::new(config.csv.clone())),
            FileFormat::Ndjson => Arc::new(ndjson::NdjsonFormat::new(config.ndjson.clone())),
            FileFormat::Parquet => Arc::new(parquet::ParquetFormat),
        })
    }
}
