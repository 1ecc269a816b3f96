//! What the engine asks of a source, and of a file format.
//!
//! There are two kinds of source, and one ingest path for both ([`crate::ingest`]):
//! - a [`FileSource`] lists the files it holds (with what identifies their content) and
//!   opens one as a byte stream, which a [`Format`] decodes into [`RawChunk`]s. The table's
//!   file ledger decides which files are new.
//! - an [`Extractor`] reads records from a position on: a cursor, a page token, an LSN. It
//!   yields [`Page`]s of decoded records, each with the position the source stands at once
//!   that page is in the table.
//!
//! Neither knows about tables: a unit of input only counts as ingested once the commit that
//! carries its rows and the source's new position (the ledger entries of its files, or the
//! extractor's position) is in the Delta log. That is why a source may list the same file
//! or read the same page any number of times, and why a crash at any point is safe: nothing
//! a source does is state. Sources are async and never block a runtime worker; decoding is
//! CPU work the engine runs on blocking threads.

use std::io::Read;

use arrow::array::Int64Array;
use arrow::record_batch::RecordBatch;
use serde::{Deserialize, Serialize};

use crate::error::ErrorKind;

/// One file a source holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceFile {
    /// Path relative to the source root, `/`-separated.
    pub path: String,
    /// Size as stored, in bytes.
    pub size_bytes: u64,
    /// Modification time, microseconds since the Unix epoch.
    pub modified_micros: i64,
    /// The object store's entity tag, when the store has one (S3): it names the content, so
    /// an object rewritten with the same bytes is not a change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
}

impl SourceFile {
    /// A file known by size and modification time (no entity tag).
    pub fn new(path: impl Into<String>, size_bytes: u64, modified_micros: i64) -> Self {
        SourceFile { path: path.into(), size_bytes, modified_micros, etag: None }
    }
}

/// Why a source, or one unit of it, cannot be read: what a connector's own error becomes at
/// the engine's boundary, keeping its kind and whether trying again may help.
#[derive(Debug, thiserror::Error)]
#[error("{inner}")]
pub struct SourceError {
    kind: ErrorKind,
    retryable: bool,
    #[source]
    inner: Box<dyn std::error::Error + Send + Sync>,
}

impl SourceError {
    pub fn new(kind: ErrorKind, retryable: bool, error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        SourceError { kind, retryable, inner: error.into() }
    }

    /// A failure of the system the source reads (storage, network): retryable.
    pub fn external(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        SourceError::new(ErrorKind::External, true, error)
    }

    /// The input or the configuration is wrong: not retryable.
    pub fn user(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        SourceError::new(ErrorKind::User, false, error)
    }

    /// A bug or a broken invariant.
    pub fn internal(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        SourceError::new(ErrorKind::Internal, false, error)
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    pub fn is_retryable(&self) -> bool {
        self.retryable
    }

    /// The connector's own error, to downcast.
    pub fn inner(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        self.inner.as_ref()
    }
}

/// Files arriving somewhere: a local directory, an S3 prefix, a notification queue.
#[async_trait::async_trait]
pub trait FileSource: Send + Sync {
    /// Every file the source holds now, in the order they should be ingested (oldest first,
    /// then by path). Listing twice lists the same files again. A queue may also receive
    /// messages here and hold them until [`FileSource::done`].
    async fn list(&self) -> Result<Vec<SourceFile>, SourceError>;

    /// The files the source holds, changing nothing anywhere (`inlet status`): a queue is
    /// not received from, so no message is hidden from another consumer or deleted.
    async fn peek(&self) -> Result<Vec<SourceFile>, SourceError>;

    /// Opens a file (decompressed by extension). The input is read on a blocking thread.
    async fn open(&self, file: &SourceFile) -> Result<Input, SourceError>;

    /// Whether files appear whole (objects in an object store): then there is nothing to
    /// wait for, and `inlet serve` takes a file as soon as it is seen.
    fn atomic(&self) -> bool {
        false
    }

    /// Every file the source holds, even when [`FileSource::list`] returns a slice (a queue
    /// lists what was announced): used to finish an interrupted commit whole.
    async fn list_all(&self) -> Result<Vec<SourceFile>, SourceError> {
        self.list().await
    }

    /// Whether the last listing left files behind that listing again would return now (a
    /// queue read a slice at a time), and the files it returned got somewhere: a run taking
    /// everything available lists again.
    fn more(&self) -> bool {
        false
    }

    /// Told that these files are in the table (just committed, or found in the ledger): the
    /// source may let go of them now (`clean_source`, a queue's messages), never before.
    async fn done(&self, _files: &[SourceFile]) -> Result<(), SourceError> {
        Ok(())
    }

    /// Told that these files will not be ingested as they are (changed after ingestion, and
    /// reported): a notification about them can be let go of; the files stay.
    async fn passed_over(&self, _files: &[SourceFile]) -> Result<(), SourceError> {
        Ok(())
    }
}

/// An opened file. It is read by a decoder on a blocking thread, never on a runtime worker.
pub enum Input {
    /// A plain local file: formats that need random access (Parquet) read it in place.
    File(std::fs::File),
    /// A byte stream (decompressed, or remote).
    Stream(Box<dyn Read + Send>),
}

impl Input {
    /// The input as a byte stream.
    pub fn into_read(self) -> Box<dyn Read + Send> {
        match self {
            Input::File(file) => Box::new(file),
            Input::Stream(read) => read,
        }
    }
}

/// Records read from a position on: an API, a database's log, a stream.
#[async_trait::async_trait]
pub trait Extractor: Send + Sync {
    /// Starts reading where `from` says (the position the table's latest commit of this
    /// source carries; `None` before the first). Reading stops at what exists now: one run
    /// takes everything up to its start, as `inlet run` does for files.
    async fn start(&self, from: Option<serde_json::Value>) -> Result<Box<dyn Extraction>, SourceError>;

    /// The position to start again from, as if the table held nothing of this source
    /// (`inlet resnapshot`): `from` is where it stands, `table_version` the table's version
    /// now (`None`: not created yet), whose rows the run's first commit replaces. By default
    /// the position of a first run.
    fn restart(
        &self,
        from: Option<serde_json::Value>,
        table_version: Option<i64>,
    ) -> Result<Option<serde_json::Value>, SourceError> {
        let _ = (from, table_version);
        Ok(None)
    }
}

/// One extraction in progress.
#[async_trait::async_trait]
pub trait Extraction: Send {
    /// The next page, `None` once everything up to now was read. An error ends the
    /// extraction: the pages before it can still be committed, with their positions.
    async fn next_page(&mut self) -> Result<Option<Page>, SourceError>;

    /// Requests made so far (retries included).
    fn requests(&self) -> u64 {
        0
    }

    /// How far behind the source the extraction began (a replication slot), once known.
    fn lag(&self) -> Option<Lag> {
        None
    }
}

/// How far behind its source an extraction began.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Lag {
    /// Bytes of the source's log not yet in the table.
    pub bytes: u64,
    /// Age of the oldest change not yet in the table (0 when there was none).
    pub seconds: f64,
    /// Bytes of log the source keeps for this reader (a slot's retained WAL).
    pub retained_bytes: u64,
}

/// A page of decoded records, and where the source stands once it is in the table.
pub struct Page {
    /// The request's URL, secrets removed: the rows' `_source_url`.
    pub url: String,
    /// The page's number in its sweep, 1-based: the rows' `_source_page`.
    pub number: i64,
    /// Bytes received.
    pub bytes: u64,
    /// The records, as decoded (a record or a body that could not be decoded is in `bad`).
    pub chunk: RawChunk,
    /// The source's position once this page and every page before it are in the table.
    pub position: serde_json::Value,
    /// Whether a commit may end after this page. A database's transaction can span pages:
    /// its rows land in one commit, so only its last page is a cut.
    pub cut: bool,
    /// Rows computed from the table itself instead of `chunk`'s (whose columns are the
    /// page's), once every page before this one is committed: the page before it must be a
    /// cut, since the group before it ends there.
    pub derive: Option<Derive>,
}

/// A page's rows as SQL over its table: `before` is the table at `before_version`, `now`
/// the table as committed when the page comes. The result's columns fill the page's by
/// name, cast to their types; a column the result lacks is NULL.
#[derive(Debug, Clone, PartialEq)]
pub struct Derive {
    pub sql: String,
    pub before_version: i64,
}

/// Bounded set of reasons a record goes to quarantine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// A CSV record with more or fewer fields than the header.
    FieldCount,
    /// A value that does not parse as the column's type.
    TypeParse,
    /// Bytes that are not valid in the file's encoding.
    Encoding,
    /// An NDJSON line, or a response body, that is not valid JSON.
    JsonSyntax,
    /// An NDJSON line or a record that is valid JSON but not an object, or a response
    /// body without the records where `data_selector` says.
    JsonShape,
    /// A record without the value of its `primary_key` or incremental cursor.
    MissingKey,
    /// A record whose incremental cursor is not of the initial value's kind (a timestamp,
    /// a number).
    BadCursor,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::FieldCount => "field_count",
            ErrorCode::TypeParse => "type_parse",
            ErrorCode::Encoding => "encoding",
            ErrorCode::JsonSyntax => "json_syntax",
            ErrorCode::JsonShape => "json_shape",
            ErrorCode::MissingKey => "missing_key",
            ErrorCode::BadCursor => "bad_cursor",
        }
    }
}

/// A record that could not be decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct BadRecord {
    /// 1-based record number in the file or page (0: the whole response body).
    pub row: i64,
    pub code: ErrorCode,
    pub message: String,
    /// The record as found (lossily decoded where it was not valid text).
    pub raw: Option<String>,
}

/// How to show a decoded row again as raw text, for quarantine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawStyle {
    /// Fields joined by this delimiter, quoted where needed.
    Csv { delimiter: u8, quote: u8 },
    /// A JSON object.
    Json,
}

/// A slice of a file or page as decoded.
#[derive(Debug, Clone)]
pub struct RawChunk {
    /// Columns as read: `Utf8` for text formats (typed later) but where a decoder typed a
    /// column exactly ([`DecodeOptions::types`]), typed for Parquet.
    pub batch: RecordBatch,
    /// Record number of each row of `batch`, 1-based.
    pub rows: Int64Array,
    /// Records of this slice that could not be decoded.
    pub bad: Vec<BadRecord>,
    /// Whether `batch` holds text still to be typed.
    pub text: bool,
    pub raw_style: RawStyle,
}

impl RawChunk {
    /// The chunk with only the rows `keep` says (its bad records stay).
    pub fn retain(self, keep: &arrow::array::BooleanArray) -> Result<RawChunk, arrow::error::ArrowError> {
        let batch = arrow::compute::filter_record_batch(&self.batch, keep)?;
        let rows = arrow::compute::filter(&self.rows, keep)?;
        let rows = rows
            .as_any()
            .downcast_ref::<Int64Array>()
            .cloned()
            .ok_or_else(|| arrow::error::ArrowError::InvalidArgumentError("record numbers are not int64".into()))?;
        Ok(RawChunk { batch, rows, ..self })
    }
}

/// Decodes one file.
pub trait Decoder: Send {
    /// The next slice of the file, `None` at its end. `Err` means the file cannot be read
    /// at all (truncated compression, IO error): nothing of it is committed.
    fn next_chunk(&mut self) -> Result<Option<RawChunk>, SourceError>;
}

/// What a decoder is asked for besides the bytes.
#[derive(Debug, Clone, Default)]
pub struct DecodeOptions {
    /// Records per chunk (at least one).
    pub rows_per_chunk: usize,
    /// The types columns will have in the table, by name: its schema's, or hints for columns
    /// it does not have yet. A text decoder may give such a column typed where every value of
    /// a chunk is spelled exactly as the type shows it (`crate::text_cast::exact`), and gives
    /// it as text otherwise; conforming takes either.
    pub types: std::collections::HashMap<String, arrow::datatypes::DataType>,
}

impl DecodeOptions {
    /// Chunks of `rows_per_chunk` records, every column as text.
    pub fn text(rows_per_chunk: usize) -> DecodeOptions {
        DecodeOptions { rows_per_chunk, types: std::collections::HashMap::new() }
    }
}

/// A file format: turns a byte stream into a [`Decoder`]. CPU only, run on blocking threads.
pub trait Format: Send + Sync {
    fn decoder(&self, input: Input, options: &DecodeOptions) -> Result<Box<dyn Decoder>, SourceError>;
}

/// A source as the connectors built it.
#[derive(Clone)]
pub enum Source {
    Files { files: std::sync::Arc<dyn FileSource>, format: std::sync::Arc<dyn Format> },
    Extractor(std::sync::Arc<dyn Extractor>),
}
