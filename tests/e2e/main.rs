//! End-to-end tests: the real `inlet` binary on real files, every table read back by DuckDB.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod backfill;
mod cli;
mod conformance;
mod contract;
mod deletion_vectors;
mod drift;
mod encoding;
mod exactly_once;
mod failures;
mod ledger;
mod maintenance;
mod observe;
mod postgres;
mod quality;
mod quarantine;
mod readers;
mod rest;
mod s3;
mod sample;
mod serve;
mod stats;
mod transform_crash;
mod transforms;
