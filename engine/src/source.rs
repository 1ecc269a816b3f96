//! What the engine asks of a source and of a file format.
//!
//! A [`Source`] lists the units of input it holds (files, with what identifies their
//! content) and opens one as a byte stream. A [`Format`] decodes such a stream into
//! [`RawChunk`]s: Arrow columns as read, the record number of every row, and the records it
//! could not decode. Neither knows about tables or ledgers: which units are new is the
//! ledger's business, and a unit only counts as ingested once the commit that carries its
//! rows and its ledger entry is in the Delta log. That is why a source may list the same
//! file any number of times, and why a crash at any point is safe: nothing a source or a
//! format does is state.

use std::io::Read;

use arrow::array::Int64Array;
use arrow::record_batch::RecordBatch;
use serde::{Deserialize, Serialize};

/// One unit of input a source holds.
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

/// Why a file could not be read at all. The file is left un-ingested and retried next run.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct FileError {
    pub message: String,
}

impl FileError {
    pub fn new(message: impl Into<String>) -> Self {
        FileError { message: message.into() }
    }
}

impl From<std::io::Error> for FileError {
    fn from(err: std::io::Error) -> Self {
        FileError::new(err.to_string())
    }
}

/// Where bytes come from.
pub trait Source: Send + Sync {
    /// Every unit the source holds now, in the order they should be ingested
    /// (oldest first, then by path). Listing twice lists the same units again.
    fn list(&self) -> Result<Vec<SourceFile>, FileError>;

    /// Opens a unit (decompressed by extension).
    fn open(&self, file: &SourceFile) -> Result<Input, FileError>;

    /// Whether units appear whole (objects in an object store): then there is nothing to
    /// wait for, and `inlet serve` takes a unit as soon as it is seen.
    fn atomic(&self) -> bool {
        false
    }

    /// Every unit the source holds, even when [`Source::list`] returns a slice (a queue
    /// lists what was announced): used to finish an interrupted commit whole.
    fn list_all(&self) -> Result<Vec<SourceFile>, FileError> {
        self.list()
    }

    /// Whether the last listing left units behind that listing again would return now (a
    /// queue read a slice at a time), and the units it returned got somewhere: a run taking
    /// everything available lists again.
    fn more(&self) -> bool {
        false
    }

    /// Told that these units are in the table (just committed, or found in the ledger): the
    /// source may let go of them now (`clean_source`), never before.
    fn done(&self, _files: &[SourceFile]) -> Result<(), FileError> {
        Ok(())
    }

    /// Told that these units will not be ingested as they are (changed after ingestion, and
    /// reported): a notification about them can be let go of; the files stay.
    fn passed_over(&self, _files: &[SourceFile]) -> Result<(), FileError> {
        Ok(())
    }
}

/// An opened unit of input.
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
    /// An NDJSON line that is not valid JSON.
    JsonSyntax,
    /// An NDJSON line that is valid JSON but not an object.
    JsonShape,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::FieldCount => "field_count",
            ErrorCode::TypeParse => "type_parse",
            ErrorCode::Encoding => "encoding",
            ErrorCode::JsonSyntax => "json_syntax",
            ErrorCode::JsonShape => "json_shape",
        }
    }
}

/// A record that could not be decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct BadRecord {
    /// 1-based record number in the file.
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

/// A slice of a file as decoded.
#[derive(Debug, Clone)]
pub struct RawChunk {
    /// Columns as read: all `Utf8` for text formats (typed later), typed for Parquet.
    pub batch: RecordBatch,
    /// Record number of each row of `batch`, 1-based.
    pub rows: Int64Array,
    /// Records of this slice that could not be decoded.
    pub bad: Vec<BadRecord>,
    /// Whether `batch` holds text still to be typed.
    pub text: bool,
    pub raw_style: RawStyle,
}

/// Decodes one file.
pub trait Decoder: Send {
    /// The next slice of the file, `None` at its end. `Err` means the file cannot be read
    /// at all (truncated compression, IO error): nothing of it is committed.
    fn next_chunk(&mut self) -> Result<Option<RawChunk>, FileError>;
}

/// A file format: turns a byte stream into a [`Decoder`].
pub trait Format: Send + Sync {
    fn decoder(&self, input: Input, rows_per_chunk: usize) -> Result<Box<dyn Decoder>, FileError>;
}
