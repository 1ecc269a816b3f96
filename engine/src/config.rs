//! The pipeline file: TOML in, a validated [`PipelineConfig`] out.
//!
//! Parsing does no IO (the caller hands over the text), so `inlet validate` works offline
//! and every error names its line and key. Paths stay as written; the run resolves them
//! against the pipeline file's directory.

use std::collections::{BTreeMap, HashSet};
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::error::{EngineError, Result};
use crate::schema::ColumnType;

mod maintenance;
pub mod observe;
mod postgres;
mod rest;
pub use maintenance::MaintenanceSection;
pub use observe::{AlertConfig, AlertEvent, AlertFormat, OpenLineageSection};
pub use postgres::{PostgresMode, PostgresSource, QualifiedName};
pub use rest::{
    ApiKeyLocation, Auth, HttpMethod, Incremental, JsonPath, Paginator, ParamValue, PathStep, RestSource,
    env_reference, placeholders, toml_to_json,
};

/// What names a table's quarantine: `<layer>.<name>__quarantine`.
pub const QUARANTINE_SUFFIX: &str = "__quarantine";

/// A whole pipeline file.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    pub pipeline: PipelineSection,
    /// Sources by name, in name order.
    pub sources: BTreeMap<String, SourceConfig>,
    /// Derived tables (silver, gold) by `<layer>.<name>`, in name order.
    pub tables: BTreeMap<String, TableConfig>,
}

/// The pipeline file but its sources, which are read by their `type`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Document {
    pipeline: PipelineSection,
    #[serde(default)]
    tables: BTreeMap<String, TableConfig>,
}

/// `[tables."<layer>.<name>"]`: a table computed by SQL over other tables.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableConfig {
    /// The query (DataFusion SQL); tables are named `<layer>.<name>`.
    #[serde(default)]
    pub sql: Option<Spanned<String>>,
    /// A file holding the query instead, relative to the pipeline file.
    #[serde(default)]
    pub sql_file: Option<Spanned<String>>,
    /// How the result is written.
    #[serde(default)]
    pub write: WriteMode,
    /// Key columns (`merge`, `scd2`).
    #[serde(default)]
    pub keys: Vec<String>,
    /// Orders versions of a key: the latest wins (`merge`); valid time (`scd2`).
    #[serde(default)]
    pub sequence_by: Option<String>,
    /// Rows matching this SQL condition delete (`merge`) or close (`scd2`) their key.
    #[serde(default)]
    pub delete_when: Option<Spanned<String>>,
    /// Read only upstream rows committed since this table's last run.
    #[serde(default)]
    pub incremental: bool,
    /// Partition columns of the table.
    #[serde(default)]
    pub partition_by: Vec<String>,
    /// Columns whose change opens a new history row (`scd2`); all non-key columns when absent.
    #[serde(default)]
    pub track_columns: Option<Vec<String>>,
    /// What a deleted key does to its history (`scd2`).
    #[serde(default)]
    pub deletes: Scd2Deletes,
    /// The query returns every live key each run (`scd2`): an absent key is a delete.
    #[serde(default)]
    pub source_is_snapshot: bool,
    /// Result columns the table does not have yet (`merge`, `scd2`, `append`).
    #[serde(default)]
    pub on_new_columns: OnNewColumns,
    /// Sets `delta.enableChangeDataFeed`: merge and scd2 commits then carry the changed
    /// rows as `cdc` files, and incremental readers of this table read only those.
    #[serde(default)]
    pub change_data_feed: bool,
    /// Sets `delta.enableDeletionVectors` (reader 3 / writer 7, feature `deletionVectors`):
    /// a `merge` or `scd2` then marks the rows it replaces in deletion vectors instead of
    /// rewriting their files. `inlet optimize` purges them.
    #[serde(default)]
    pub deletion_vectors: bool,
    /// Expectations checked on the rows about to be committed.
    #[serde(default)]
    pub expect: Vec<inlet_quality::Expectation>,
    /// `inlet serve`: what refreshes the table.
    #[serde(default)]
    pub refresh: Refresh,
    /// Cron expression (UTC; five fields, or six with seconds first) for `refresh = "schedule"`.
    #[serde(default)]
    pub schedule: Option<Spanned<String>>,
    /// The table is stale when its last successful run is older than this.
    #[serde(default)]
    pub freshness_sla_secs: Option<u64>,
}

/// `inlet serve`: what refreshes a derived table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Refresh {
    /// After a commit to any table it reads (bursts coalesce into one refresh).
    #[default]
    OnUpstream,
    /// At the times of its `schedule`.
    Schedule,
    /// Only by `inlet run`.
    Manual,
}

/// How a source finds new files.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Discovery {
    /// List `path`.
    #[default]
    Listing,
    /// S3 event notifications on an SQS queue (`queue_url`), reconciled by listings.
    Notifications,
}

/// What becomes of a landing file after the commit holding it (never before).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CleanSource {
    /// Leave it where it is.
    #[default]
    Off,
    /// Delete it.
    Delete,
    /// Move it under `clean_source_move_to`.
    Move,
}

/// `inlet serve`: what starts a source's ingestion.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// File events, with a listing every `reconcile_interval_secs` for events that were lost.
    #[default]
    Watch,
    /// At the times of its `schedule`.
    Schedule,
    /// Only by `inlet run`.
    Manual,
}

/// Write strategies of derived tables.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WriteMode {
    /// Add the result as new rows.
    Append,
    /// Replace the whole table with the result, in one commit.
    #[default]
    Overwrite,
    /// Upsert by `keys`.
    Merge,
    /// Slowly changing dimension, type 2: history rows with validity ranges.
    Scd2,
    /// Replace the partitions present in the result; others stay.
    ReplacePartitions,
}

impl WriteMode {
    pub fn as_str(self) -> &'static str {
        match self {
            WriteMode::Append => "append",
            WriteMode::Overwrite => "overwrite",
            WriteMode::Merge => "merge",
            WriteMode::Scd2 => "scd2",
            WriteMode::ReplacePartitions => "replace_partitions",
        }
    }
}

/// `scd2`: what a deleted key does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scd2Deletes {
    /// Close its current row.
    #[default]
    Close,
    /// Keep its current row open.
    Ignore,
}

/// `[pipeline]`: what the pipeline is called and where its lake lives.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineSection {
    /// Name of the pipeline, used in logs and reports.
    pub name: String,
    /// Root of all tables: a path relative to the pipeline file, or a URL (`file://`, `s3://`).
    #[serde(default = "default_lake")]
    pub lake: String,
    /// How many files are decoded and written at once; 0 means one per CPU core.
    #[serde(default)]
    pub max_parallel_files: usize,
    /// `inlet serve`.
    #[serde(default)]
    pub serve: ServeSection,
    /// `inlet serve`: how a source that fails with a retryable error is retried.
    #[serde(default)]
    pub retry: RetrySection,
    /// Checkpoints, log and file retention, scheduled optimize and vacuum.
    #[serde(default)]
    pub maintenance: MaintenanceSection,
    /// `[[pipeline.alerts]]`: webhooks `inlet serve` tells of failures and breaches.
    #[serde(default)]
    pub alerts: Vec<AlertConfig>,
    /// `[pipeline.openlineage]`: lineage events of every source and table run.
    #[serde(default)]
    pub openlineage: Option<OpenLineageSection>,
}

/// `[pipeline.retry]`: exponential backoff with full jitter, for retryable errors only
/// (storage, listing, commit conflicts); after `max_attempts` failures in a row the source's
/// circuit opens and it is skipped for `max_backoff_secs`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySection {
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    #[serde(default = "default_initial_backoff_ms")]
    pub initial_backoff_ms: u64,
    #[serde(default = "default_max_backoff_secs")]
    pub max_backoff_secs: u64,
}

impl Default for RetrySection {
    fn default() -> Self {
        RetrySection {
            max_attempts: default_max_attempts(),
            initial_backoff_ms: default_initial_backoff_ms(),
            max_backoff_secs: default_max_backoff_secs(),
        }
    }
}

fn default_max_attempts() -> u32 {
    5
}

fn default_initial_backoff_ms() -> u64 {
    500
}

fn default_max_backoff_secs() -> u64 {
    60
}

/// `[pipeline.serve]`: the long-running process.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeSection {
    /// Address of `/metrics`, `/health` and `/ready`; loopback unless said otherwise.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Sources and tables worked on at once.
    #[serde(default = "default_max_concurrent_tasks")]
    pub max_concurrent_tasks: usize,
    /// The dashboard (`/`, and its data under `/api/`) on the same listener. Unset: served
    /// on loopback, or beyond it with a `token`; never open to the network unless `true`
    /// says so.
    #[serde(default)]
    pub dashboard: Option<bool>,
    /// `${env:NAME}` of a bearer token the dashboard and `/api/` ask of requests that do not
    /// come from loopback.
    #[serde(default)]
    pub token: Option<String>,
}

impl Default for ServeSection {
    fn default() -> Self {
        ServeSection {
            listen: default_listen(),
            max_concurrent_tasks: default_max_concurrent_tasks(),
            dashboard: None,
            token: None,
        }
    }
}

fn default_max_concurrent_tasks() -> usize {
    4
}

fn default_listen() -> String {
    "127.0.0.1:9464".to_owned()
}

fn default_lake() -> String {
    "lake".to_owned()
}

/// `[sources.<name>]`: one source; its `type` says which kind.
#[derive(Debug, Clone)]
// A pipeline holds a handful of these: their size does not matter.
#[allow(clippy::large_enum_variant)]
pub enum SourceConfig {
    /// Files arriving in a directory, an S3 prefix or announced on a queue.
    Files(FilesSource),
    /// Records of an HTTP API.
    Rest(RestSource),
    /// A table (or query) of a PostgreSQL database.
    Postgres(PostgresSource),
}

impl SourceConfig {
    pub fn kind(&self) -> SourceKind {
        match self {
            SourceConfig::Files(_) => SourceKind::Files,
            SourceConfig::Rest(_) => SourceKind::Rest,
            SourceConfig::Postgres(_) => SourceKind::Postgres,
        }
    }

    /// The `<layer>.<name>` table this source lands in.
    pub fn target(&self) -> &str {
        self.target_spanned().get_ref()
    }

    pub fn target_spanned(&self) -> &Spanned<String> {
        match self {
            SourceConfig::Files(files) => &files.target,
            SourceConfig::Rest(rest) => &rest.target,
            SourceConfig::Postgres(pg) => &pg.resolved_target,
        }
    }

    /// How old its newest committed data may get before it is stale.
    pub fn freshness_sla_secs(&self) -> Option<u64> {
        match self {
            SourceConfig::Files(files) => files.freshness_sla_secs,
            SourceConfig::Rest(rest) => rest.freshness_sla_secs,
            SourceConfig::Postgres(pg) => pg.freshness_sla_secs,
        }
    }

    /// What starts the source under `inlet serve`.
    pub fn trigger(&self) -> Trigger {
        match self {
            SourceConfig::Files(files) => files.trigger,
            SourceConfig::Rest(rest) => rest.trigger(),
            SourceConfig::Postgres(pg) => pg.trigger(),
        }
    }

    /// Its cron expression, for `trigger = "schedule"`.
    pub fn schedule(&self) -> Option<&Spanned<String>> {
        match self {
            SourceConfig::Files(files) => files.schedule.as_ref(),
            SourceConfig::Rest(rest) => rest.schedule.as_ref(),
            SourceConfig::Postgres(pg) => pg.schedule.as_ref(),
        }
    }

    /// Expectations over the rows of each commit.
    pub fn expect(&self) -> &[inlet_quality::Expectation] {
        match self {
            SourceConfig::Files(files) => &files.expect,
            SourceConfig::Rest(rest) => &rest.expect,
            SourceConfig::Postgres(pg) => &pg.expect,
        }
    }

    /// Column type hints.
    pub fn schema_hints(&self) -> &BTreeMap<String, Spanned<String>> {
        match self {
            SourceConfig::Files(files) => &files.schema,
            SourceConfig::Rest(rest) => &rest.schema,
            // Columns come typed from the catalog.
            SourceConfig::Postgres(_) => &NO_HINTS,
        }
    }

    pub fn on_new_columns(&self) -> OnNewColumns {
        match self {
            SourceConfig::Files(files) => files.on_new_columns,
            SourceConfig::Rest(rest) => rest.on_new_columns,
            SourceConfig::Postgres(pg) => pg.on_new_columns,
        }
    }

    /// Where its rows say they came from.
    pub fn provenance(&self) -> crate::schema::Provenance {
        match self {
            SourceConfig::Files(_) => crate::schema::Provenance::Files,
            SourceConfig::Rest(_) | SourceConfig::Postgres(_) => crate::schema::Provenance::Requests,
        }
    }

    /// Records in one commit at most (extractors).
    pub fn max_records_per_commit(&self) -> Option<u64> {
        match self {
            SourceConfig::Files(_) => None,
            SourceConfig::Rest(rest) => Some(rest.max_records_per_commit),
            SourceConfig::Postgres(pg) => Some(pg.max_records_per_commit),
        }
    }

    pub fn files(&self) -> Option<&FilesSource> {
        match self {
            SourceConfig::Files(files) => Some(files),
            SourceConfig::Rest(_) | SourceConfig::Postgres(_) => None,
        }
    }

    pub fn rest(&self) -> Option<&RestSource> {
        match self {
            SourceConfig::Rest(rest) => Some(rest),
            SourceConfig::Files(_) | SourceConfig::Postgres(_) => None,
        }
    }

    pub fn postgres(&self) -> Option<&PostgresSource> {
        match self {
            SourceConfig::Postgres(pg) => Some(pg),
            SourceConfig::Files(_) | SourceConfig::Rest(_) => None,
        }
    }
}

/// Hints of sources whose columns come typed.
static NO_HINTS: BTreeMap<String, Spanned<String>> = BTreeMap::new();

/// Kinds of source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    /// Files arriving in a directory.
    Files,
    /// An HTTP API.
    Rest,
    /// A PostgreSQL database.
    Postgres,
}

impl SourceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Files => "files",
            SourceKind::Rest => "rest",
            SourceKind::Postgres => "postgres",
        }
    }
}

/// A directory of files in one format.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilesSource {
    /// Kind of source: `files`.
    #[serde(rename = "type")]
    pub kind: SourceKind,
    /// Directory to watch; relative to the pipeline file.
    pub path: String,
    /// How the files are encoded.
    pub format: FileFormat,
    /// Target table, `<layer>.<name>`, stored at `<lake>/<layer>/<name>`.
    pub target: Spanned<String>,
    /// Glob over the path relative to `path`, e.g. `*.csv*` or `2024/**/*.json`. All files when absent.
    #[serde(default)]
    pub pattern: Option<Spanned<String>>,
    /// Descend into subdirectories.
    #[serde(default = "default_true")]
    pub recursive: bool,
    /// Column type hints by name (`bigint`, `double`, `decimal(18,2)`, `timestamp`, ...); other columns are inferred.
    #[serde(default)]
    pub schema: BTreeMap<String, Spanned<String>>,
    /// What to do with columns the table does not have yet.
    #[serde(default)]
    pub on_new_columns: OnNewColumns,
    /// Most files in one commit.
    #[serde(default = "default_max_files_per_commit")]
    pub max_files_per_commit: usize,
    /// Most input bytes (as stored, before decompression) in one commit; a single larger file still goes in alone.
    #[serde(default = "default_max_bytes_per_commit")]
    pub max_bytes_per_commit: u64,
    /// Ingest a file again, as new rows, when it changes after it was ingested (size or modification time).
    #[serde(default)]
    pub allow_overwrites: bool,
    /// CSV options.
    #[serde(default)]
    pub csv: CsvOptions,
    /// NDJSON options.
    #[serde(default)]
    pub ndjson: NdjsonOptions,
    /// `inlet serve`: a file is taken once it has not changed for this long (a file still
    /// being written is left for later).
    #[serde(default = "default_debounce_ms")]
    pub debounce_ms: u64,
    /// `inlet serve`: list the source this often even without file events (events can be lost).
    #[serde(default = "default_reconcile_interval_secs")]
    pub reconcile_interval_secs: u64,
    /// How new files are found: by listing `path`, or from S3 event notifications on an SQS
    /// queue (with a listing every `reconcile_interval_secs`, since notifications can be lost).
    #[serde(default)]
    pub discovery: Discovery,
    /// The SQS queue S3 sends `path`'s event notifications to (`discovery = "notifications"`).
    #[serde(default)]
    pub queue_url: Option<String>,
    /// How long a received message stays hidden from other consumers of the queue; renewed
    /// every quarter of it while its files are worked on (`discovery = "notifications"`;
    /// [`DEFAULT_VISIBILITY_TIMEOUT_SECS`] when not set).
    #[serde(default)]
    pub visibility_timeout_secs: Option<u64>,
    /// What becomes of a file once the commit that holds it succeeded.
    #[serde(default)]
    pub clean_source: CleanSource,
    /// Where `clean_source = "move"` moves files (keeping their path under `path`): a
    /// directory relative to this file, or a prefix in the same bucket.
    #[serde(default)]
    pub clean_source_move_to: Option<String>,
    /// `inlet serve`: what starts an ingestion.
    #[serde(default)]
    pub trigger: Trigger,
    /// Cron expression (UTC; five fields, or six with seconds first) for `trigger = "schedule"`.
    #[serde(default)]
    pub schedule: Option<Spanned<String>>,
    /// The source is stale when its newest committed data is older than this.
    #[serde(default)]
    pub freshness_sla_secs: Option<u64>,
    /// Expectations checked on the rows of each commit, after parsing.
    #[serde(default)]
    pub expect: Vec<inlet_quality::Expectation>,
}

impl FilesSource {
    /// The `<layer>.<name>` table this source lands in.
    pub fn target(&self) -> &str {
        self.target.get_ref()
    }

    /// Whether `path` is an S3 prefix (`s3://` or `s3a://`) rather than a local directory.
    pub fn on_s3(&self) -> bool {
        self.path.starts_with("s3://") || self.path.starts_with("s3a://")
    }
}

fn default_true() -> bool {
    true
}

fn default_debounce_ms() -> u64 {
    200
}

fn default_reconcile_interval_secs() -> u64 {
    300
}

/// How long a received notification stays hidden unless `visibility_timeout_secs` says.
pub const DEFAULT_VISIBILITY_TIMEOUT_SECS: u64 = 120;

fn default_max_files_per_commit() -> usize {
    1000
}

fn default_max_bytes_per_commit() -> u64 {
    1 << 30
}

/// File formats; `.gz` and `.zst` files are decompressed by extension first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FileFormat {
    Csv,
    Ndjson,
    Parquet,
}

/// Schema drift: columns in a file that the table does not have.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnNewColumns {
    /// Add them to the table schema in the same commit.
    #[default]
    Add,
    /// Keep them as a JSON object in the `_rescued_data` string column.
    Rescue,
    /// Stop the source with an error naming the file and the columns.
    Fail,
    /// Drop them.
    Ignore,
}

/// Text encodings of CSV and NDJSON files.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
pub enum Encoding {
    #[default]
    #[serde(rename = "utf-8", alias = "utf8")]
    Utf8,
    /// ISO-8859-1: every byte is the code point of the same value.
    #[serde(rename = "latin-1", alias = "latin1", alias = "iso-8859-1")]
    Latin1,
}

/// `[sources.<name>.csv]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CsvOptions {
    /// Field separator, one ASCII character.
    #[serde(default = "default_delimiter")]
    pub delimiter: char,
    /// Quote character, one ASCII character.
    #[serde(default = "default_quote")]
    pub quote: char,
    /// Escape character inside quoted fields; when absent a quote is escaped by doubling it.
    #[serde(default)]
    pub escape: Option<char>,
    /// Lines starting with this character are skipped.
    #[serde(default)]
    pub comment: Option<char>,
    /// The first record names the columns; without it columns are `_c0`, `_c1`, ...
    #[serde(default = "default_true")]
    pub header: bool,
    /// Field values read as null (compared before trimming). Empty fields are null unless the list says otherwise.
    #[serde(default = "default_null_values")]
    pub null_values: Vec<String>,
    /// Text encoding of the file.
    #[serde(default)]
    pub encoding: Encoding,
}

impl Default for CsvOptions {
    fn default() -> Self {
        CsvOptions {
            delimiter: default_delimiter(),
            quote: default_quote(),
            escape: None,
            comment: None,
            header: true,
            null_values: default_null_values(),
            encoding: Encoding::Utf8,
        }
    }
}

fn default_delimiter() -> char {
    ','
}

fn default_quote() -> char {
    '"'
}

fn default_null_values() -> Vec<String> {
    vec![String::new()]
}

/// `[sources.<name>.ndjson]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NdjsonOptions {
    /// Text encoding of the file.
    #[serde(default)]
    pub encoding: Encoding,
}

/// A `<layer>.<name>` table name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct TableName {
    pub layer: String,
    pub name: String,
}

impl TableName {
    /// Parses `<layer>.<name>`; both parts are lowercase letters, digits and `_`, starting with a letter.
    pub fn parse(text: &str) -> Option<TableName> {
        let (layer, name) = text.split_once('.')?;
        let ok = |part: &str| {
            let mut chars = part.chars();
            chars.next().is_some_and(|c| c.is_ascii_lowercase())
                && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        };
        (ok(layer) && ok(name) && !name.contains("__"))
            .then(|| TableName { layer: layer.to_owned(), name: name.to_owned() })
    }

    /// The quarantine table beside this one: `<layer>.<name>__quarantine`.
    pub fn quarantine(&self) -> TableName {
        TableName { layer: self.layer.clone(), name: format!("{}{QUARANTINE_SUFFIX}", self.name) }
    }
}

impl std::fmt::Display for TableName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.layer, self.name)
    }
}

/// Reads and parses a pipeline file: the only IO of this module.
pub fn load(path: &Path) -> Result<PipelineConfig> {
    let text =
        std::fs::read_to_string(path).map_err(|source| EngineError::ReadConfig { path: path.to_owned(), source })?;
    parse(&text, path)
}

/// Parses and validates pipeline TOML; `path` only names the file in errors.
pub fn parse(text: &str, path: &Path) -> Result<PipelineConfig> {
    let config = deserialize(text).map_err(|message| EngineError::Config { path: path.to_owned(), message })?;
    let problems = validate(&config, text);
    if problems.is_empty() {
        Ok(config)
    } else {
        Err(EngineError::Config { path: path.to_owned(), message: problems.join("\n") })
    }
}

/// Reads the document, each source by its `type`. Every value keeps its place in `text`,
/// so errors name the line of the source's own keys.
fn deserialize(text: &str) -> std::result::Result<PipelineConfig, String> {
    let toml_error = |err: toml::de::Error| describe_toml_error(text, &err);
    let error_at = |span: Range<usize>, message: String| {
        let (line, column) = line_column(text, span.start);
        format!("line {line}, column {column}: {message}")
    };
    let document = toml::de::DeTable::parse(text).map_err(toml_error)?;
    let span = document.span();
    let mut rest = toml::de::DeTable::default();
    let mut sources = None;
    for (key, value) in document.into_inner() {
        if key.get_ref() == "sources" {
            sources = Some(value);
        } else {
            rest.insert(key, value);
        }
    }
    let Document { pipeline, tables } =
        Document::deserialize(toml::de::Deserializer::from(Spanned::new(span, rest))).map_err(toml_error)?;
    let mut config = PipelineConfig { pipeline, sources: BTreeMap::new(), tables };
    let Some(sources) = sources else {
        return Ok(config);
    };
    let sources_span = sources.span();
    let toml::de::DeValue::Table(sources) = sources.into_inner() else {
        return Err(error_at(sources_span, "`sources` must be a table of sources".to_owned()));
    };
    for (name, value) in sources {
        let value_span = value.span();
        let toml::de::DeValue::Table(table) = value.into_inner() else {
            return Err(error_at(value_span, format!("`sources.{}` must be a table", name.get_ref())));
        };
        let kind = table.get("type").map(|t| (t.span(), t.get_ref().as_str().map(str::to_owned)));
        let source = match kind {
            Some((_, Some(kind))) if kind == "files" => SourceConfig::Files(
                FilesSource::deserialize(toml::de::Deserializer::from(Spanned::new(value_span, table)))
                    .map_err(toml_error)?,
            ),
            Some((_, Some(kind))) if kind == "rest" => SourceConfig::Rest(
                RestSource::deserialize(toml::de::Deserializer::from(Spanned::new(value_span, table)))
                    .map_err(toml_error)?,
            ),
            Some((_, Some(kind))) if kind == "postgres" => {
                let source =
                    PostgresSource::deserialize(toml::de::Deserializer::from(Spanned::new(value_span.clone(), table)))
                        .map_err(toml_error)?;
                for (split_name, split) in postgres::split(&config.pipeline.name, name.get_ref(), source)
                    .map_err(|m| error_at(value_span.clone(), m))?
                {
                    config.sources.insert(split_name, SourceConfig::Postgres(split));
                }
                continue;
            }
            Some((span, kind)) => {
                let found = kind.map(|k| format!("`{k}`")).unwrap_or_else(|| "not text".to_owned());
                return Err(error_at(
                    span,
                    format!(
                        "`sources.{}.type`: {found} is not a kind of source (expected `files`, `rest` or `postgres`)",
                        name.get_ref()
                    ),
                ));
            }
            None => {
                return Err(error_at(
                    value_span,
                    format!("`sources.{}`: missing `type` (`files`, `rest` or `postgres`)", name.get_ref()),
                ));
            }
        };
        config.sources.insert(name.get_ref().to_string(), source);
    }
    Ok(config)
}

fn describe_toml_error(text: &str, err: &toml::de::Error) -> String {
    let message = err.message().trim_end().to_owned();
    match err.span() {
        Some(span) => {
            let (line, column) = line_column(text, span.start);
            format!("line {line}, column {column}: {message}")
        }
        None => message,
    }
}

/// 1-based line and column of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

fn at(text: &str, span: Range<usize>, key: &str, message: String) -> String {
    let (line, column) = line_column(text, span.start);
    format!("line {line}, column {column}: `{key}`: {message}")
}

/// Checks what serde cannot: names, globs, type hints, option values, duplicate targets.
fn validate(config: &PipelineConfig, text: &str) -> Vec<String> {
    let mut problems = Vec::new();
    if config.pipeline.name.trim().is_empty() {
        problems.push("`pipeline.name`: must not be empty".to_owned());
    }
    let retry = &config.pipeline.retry;
    if retry.max_attempts == 0 || retry.initial_backoff_ms == 0 || retry.max_backoff_secs == 0 {
        problems.push(
            "`pipeline.retry`: `max_attempts`, `initial_backoff_ms` and `max_backoff_secs` must be at least 1"
                .to_owned(),
        );
    }
    if config.pipeline.serve.max_concurrent_tasks == 0 {
        problems.push("`pipeline.serve.max_concurrent_tasks`: must be at least 1".to_owned());
    }
    if config.pipeline.serve.listen.parse::<std::net::SocketAddr>().is_err() {
        problems.push(format!(
            "`pipeline.serve.listen`: `{}` is not an address such as `127.0.0.1:9464`",
            config.pipeline.serve.listen
        ));
    }
    if config.pipeline.serve.token.as_deref().is_some_and(|t| rest::env_reference(t).is_none()) {
        problems.push("`pipeline.serve.token`: a secret is `${env:NAME}`, never the value".to_owned());
    }
    problems.extend(observe::validate(&config.pipeline.alerts, config.pipeline.openlineage.as_ref()));
    let zero_slas = config
        .sources
        .iter()
        .filter(|(_, s)| s.freshness_sla_secs() == Some(0))
        .map(|(name, _)| format!("sources.{name}"))
        .chain(
            config
                .tables
                .iter()
                .filter(|(_, t)| t.freshness_sla_secs == Some(0))
                .map(|(name, _)| format!("tables.\"{name}\"")),
        );
    for key in zero_slas {
        problems.push(format!("`{key}.freshness_sla_secs`: must be at least 1"));
    }
    problems
        .extend(config.pipeline.maintenance.validate(&|spanned, key, message| at(text, spanned.span(), key, message)));
    let mut targets: HashSet<String> = HashSet::new();
    for (name, source) in &config.sources {
        let key = |field: &str| format!("sources.{name}.{field}");
        let target = source.target_spanned();
        if TableName::parse(target.get_ref()).is_none() {
            problems.push(at(
                text,
                target.span(),
                &key("target"),
                format!(
                    "`{}` is not `<layer>.<name>` (lowercase letters, digits and `_`, starting with a letter; `__` is reserved)",
                    target.get_ref()
                ),
            ));
        } else if !targets.insert(target.get_ref().clone()) {
            problems.push(at(
                text,
                target.span(),
                &key("target"),
                format!("table `{}` is the target of another source", target.get_ref()),
            ));
        }
        for (column, hint) in source.schema_hints() {
            if let Err(message) = ColumnType::parse(hint.get_ref()) {
                problems.push(at(text, hint.span(), &key(&format!("schema.{column}")), message));
            }
            if column.starts_with('_') && crate::schema::is_metadata_column(column) {
                problems.push(at(
                    text,
                    hint.span(),
                    &key(&format!("schema.{column}")),
                    "is a metadata column inlet adds itself".to_owned(),
                ));
            }
        }
        validate_schedule(
            source.trigger() == Trigger::Schedule,
            source.schedule(),
            "trigger",
            &key("schedule"),
            text,
            &mut problems,
        );
        validate_expectations(source.expect(), &format!("sources.{name}.expect"), &mut problems);
        match source {
            SourceConfig::Files(files) => validate_files(files, text, &key, &mut problems),
            SourceConfig::Rest(rest) => problems.extend(rest::validate(name, rest, &config.sources)),
            SourceConfig::Postgres(pg) => problems.extend(postgres::validate(name, pg)),
        }
    }
    problems.extend(rest_parent_cycles(config));
    for (name, table) in &config.tables {
        validate_table(name, table, &targets, text, &mut problems);
    }
    problems
}

/// What only a file source has: paths, patterns, discovery, cleanup, CSV options.
fn validate_files(files: &FilesSource, text: &str, key: &dyn Fn(&str) -> String, problems: &mut Vec<String>) {
    if files.kind != SourceKind::Files {
        problems.push(format!("`{}`: must be `files`", key("type")));
    }
    if files.path.trim().is_empty() {
        problems.push(format!("`{}`: must not be empty", key("path")));
    }
    if let Some(pattern) = &files.pattern
        && let Err(err) = globset::Glob::new(pattern.get_ref())
    {
        problems.push(at(text, pattern.span(), &key("pattern"), err.to_string()));
    }
    validate_clean_source(files, key, problems);
    match (files.discovery, &files.queue_url) {
        (Discovery::Notifications, None) => {
            problems.push(format!("`{}`: `discovery = \"notifications\"` needs the SQS queue's URL", key("queue_url")))
        }
        (Discovery::Notifications, Some(_)) if !files.on_s3() => problems.push(format!(
            "`{}`: notifications are S3 event notifications, so `path` must be `s3://...`",
            key("discovery")
        )),
        (Discovery::Listing, Some(_)) => {
            problems.push(format!("`{}`: only used with `discovery = \"notifications\"`", key("queue_url")))
        }
        _ => {}
    }
    match files.visibility_timeout_secs {
        Some(_) if files.discovery != Discovery::Notifications => problems
            .push(format!("`{}`: only used with `discovery = \"notifications\"`", key("visibility_timeout_secs"))),
        // SQS takes 0 to 43,200 (12 hours); a renewal every quarter needs at least 4 s.
        Some(secs) if !(4..=43_200).contains(&secs) => {
            problems.push(format!("`{}`: must be from 4 to 43200", key("visibility_timeout_secs")))
        }
        _ => {}
    }
    if files.reconcile_interval_secs == 0 {
        problems.push(format!("`{}`: must be at least 1", key("reconcile_interval_secs")));
    }
    if files.max_files_per_commit == 0 {
        problems.push(format!("`{}`: must be at least 1", key("max_files_per_commit")));
    }
    if files.max_bytes_per_commit == 0 {
        problems.push(format!("`{}`: must be at least 1", key("max_bytes_per_commit")));
    }
    let csv = &files.csv;
    for (field, value) in [
        ("delimiter", Some(csv.delimiter)),
        ("quote", Some(csv.quote)),
        ("escape", csv.escape),
        ("comment", csv.comment),
    ] {
        if let Some(c) = value
            && (!c.is_ascii() || c == '\n' || c == '\r')
        {
            problems.push(format!(
                "`{}`: must be one ASCII character other than a line break, not {c:?}",
                key(&format!("csv.{field}"))
            ));
        }
    }
    if csv.delimiter == csv.quote {
        problems.push(format!("`{}`: delimiter and quote must differ", key("csv")));
    }
}

/// `parent` chains of REST sources end (no source is its own ancestor).
fn rest_parent_cycles(config: &PipelineConfig) -> Vec<String> {
    let mut problems = Vec::new();
    for (name, source) in &config.sources {
        let mut seen = vec![name.as_str()];
        // A source that is its own parent is reported where its `parent` is checked.
        let mut current = source.rest().and_then(|r| r.parent.as_deref()).filter(|p| p != name);
        while let Some(parent) = current {
            if seen.contains(&parent) {
                problems.push(format!(
                    "`sources.{name}.parent`: the parents of `{name}` form a cycle ({})",
                    seen.join(" -> ")
                ));
                break;
            }
            seen.push(parent);
            current = config.sources.get(parent).and_then(SourceConfig::rest).and_then(|r| r.parent.as_deref());
        }
    }
    problems
}

/// `clean_source_move_to` is given exactly for `move`, on the same store as `path` (the
/// same bucket on S3) and outside it (moved files would be listed again).
fn validate_clean_source(files: &FilesSource, key: &dyn Fn(&str) -> String, problems: &mut Vec<String>) {
    let Some(to) = &files.clean_source_move_to else {
        if files.clean_source == CleanSource::Move {
            problems.push(format!("`{}`: `clean_source = \"move\"` needs a destination", key("clean_source_move_to")));
        }
        return;
    };
    if files.clean_source != CleanSource::Move {
        problems.push(format!("`{}`: only used with `clean_source = \"move\"`", key("clean_source_move_to")));
        return;
    }
    let bucket = |p: &str| {
        p.split_once("://").map(|(scheme, rest)| (scheme.to_owned(), rest.split('/').next().unwrap_or("").to_owned()))
    };
    let trimmed = |p: &str| format!("{}/", p.trim_end_matches('/'));
    if bucket(to) != bucket(&files.path) {
        problems.push(format!(
            "`{}`: `{to}` must be on the same store as `path` (`{}`; the same bucket on S3)",
            key("clean_source_move_to"),
            files.path
        ));
    } else if trimmed(to).starts_with(&trimmed(&files.path)) {
        problems.push(format!(
            "`{}`: `{to}` is inside `path`, so moved files would be listed again",
            key("clean_source_move_to")
        ));
    }
}

/// A `schedule` is given exactly when `trigger` (or `refresh`) is `"schedule"`, and parses.
fn validate_schedule(
    scheduled: bool,
    schedule: Option<&Spanned<String>>,
    mode_key: &str,
    key: &str,
    text: &str,
    problems: &mut Vec<String>,
) {
    match (scheduled, schedule) {
        (true, None) => problems.push(format!("`{key}`: `{mode_key} = \"schedule\"` needs a cron expression")),
        (false, Some(schedule)) => {
            problems.push(at(text, schedule.span(), key, format!("only used with `{mode_key} = \"schedule\"`")))
        }
        (true, Some(schedule)) => {
            if let Err(message) = crate::schedule::Schedule::parse(schedule.get_ref()) {
                problems.push(at(text, schedule.span(), key, message));
            }
        }
        (false, None) => {}
    }
}

/// Checks expectations' parameters and the syntax of their rules.
fn validate_expectations(expectations: &[inlet_quality::Expectation], key: &str, problems: &mut Vec<String>) {
    problems.extend(inlet_quality::expect::validate(expectations, key));
    for (i, expectation) in expectations.iter().enumerate() {
        if let Some(rule) = &expectation.rule
            && let Err(message) = crate::dag::parse_condition(rule)
        {
            problems.push(format!("{key}[{i}] (`{}`): `rule`: {message}", expectation.name));
        }
    }
}

/// Checks a derived table on its own; references between tables are checked by [`crate::dag`].
fn validate_table(name: &str, table: &TableConfig, targets: &HashSet<String>, text: &str, problems: &mut Vec<String>) {
    let key = |field: &str| format!("tables.\"{name}\".{field}");
    if TableName::parse(name).is_none() {
        problems.push(format!(
            "`tables.\"{name}\"`: `{name}` is not `<layer>.<name>` (lowercase letters, digits and `_`, starting with a letter; `__` is reserved)"
        ));
    } else if targets.contains(name) {
        problems.push(format!("`tables.\"{name}\"`: `{name}` is already the target of a source"));
    }
    match (&table.sql, &table.sql_file) {
        (Some(sql), None) => {
            if let Err(message) = crate::dag::parse_query(sql.get_ref()) {
                problems.push(at(text, sql.span(), &key("sql"), message));
            }
        }
        (None, Some(file)) if file.get_ref().trim().is_empty() => {
            problems.push(at(text, file.span(), &key("sql_file"), "must not be empty".to_owned()));
        }
        (None, Some(_)) => {}
        (Some(sql), Some(_)) => {
            problems.push(at(text, sql.span(), &key("sql"), "give `sql` or `sql_file`, not both".to_owned()))
        }
        (None, None) => problems.push(format!("`tables.\"{name}\"`: needs `sql` or `sql_file`")),
    }
    validate_expectations(&table.expect, &key("expect"), problems);
    validate_schedule(
        table.refresh == Refresh::Schedule,
        table.schedule.as_ref(),
        "refresh",
        &key("schedule"),
        text,
        problems,
    );
    if table.source_is_snapshot
        && table
            .expect
            .iter()
            .any(|e| matches!(e.on_violation, inlet_quality::Action::Drop | inlet_quality::Action::Quarantine))
    {
        problems.push(format!(
            "`{}`: a key left out of a snapshot (`source_is_snapshot`) is a delete, so expectations of this table may only `warn` or `fail`",
            key("expect")
        ));
    }
    let mode = table.write.as_str();
    let keyed = matches!(table.write, WriteMode::Merge | WriteMode::Scd2);
    if keyed && table.keys.is_empty() {
        problems.push(format!("`{}`: `write = \"{mode}\"` needs at least one key column", key("keys")));
    }
    if !keyed {
        for (field, set) in [
            ("keys", !table.keys.is_empty()),
            ("sequence_by", table.sequence_by.is_some()),
            ("delete_when", table.delete_when.is_some()),
        ] {
            if set {
                problems
                    .push(format!("`{}`: only for `write = \"merge\"` or `\"scd2\"`, not `\"{mode}\"`", key(field)));
            }
        }
    }
    if table.write != WriteMode::Scd2 {
        for (field, set) in
            [("track_columns", table.track_columns.is_some()), ("source_is_snapshot", table.source_is_snapshot)]
        {
            if set {
                problems.push(format!("`{}`: only for `write = \"scd2\"`, not `\"{mode}\"`", key(field)));
            }
        }
    }
    if table.deletion_vectors && !keyed {
        problems.push(format!(
            "`{}`: only for `write = \"merge\"` or `\"scd2\"`, not `\"{mode}\"`",
            key("deletion_vectors")
        ));
    }
    if table.deletion_vectors
        && let Some(key_column) = table.keys.iter().find(|k| table.partition_by.contains(k))
    {
        problems.push(format!(
            "`{}`: key `{key_column}` is a partition column, which the data files do not hold, so a merge cannot find its rows in them",
            key("deletion_vectors")
        ));
    }
    if table.incremental && matches!(table.write, WriteMode::Overwrite | WriteMode::ReplacePartitions) {
        problems.push(format!(
            "`{}`: `write = \"{mode}\"` replaces data with the query result, so it must read its inputs whole; `incremental` is for append, merge and scd2",
            key("incremental")
        ));
    }
    if table.write == WriteMode::ReplacePartitions && table.partition_by.is_empty() {
        problems.push(format!("`{}`: `write = \"replace_partitions\"` needs partition columns", key("partition_by")));
    }
    if table.write == WriteMode::Scd2 && !table.partition_by.is_empty() {
        problems.push(format!("`{}`: `scd2` tables are not partitioned", key("partition_by")));
    }
    if let Some(condition) = &table.delete_when
        && let Err(message) = crate::dag::parse_condition(condition.get_ref())
    {
        problems.push(at(text, condition.span(), &key("delete_when"), message));
    }
    let mut seen = HashSet::new();
    for column in table.keys.iter().chain(&table.partition_by) {
        if column.trim().is_empty() {
            problems.push(format!("`tables.\"{name}\"`: empty column name"));
        }
    }
    for column in &table.keys {
        if !seen.insert(column) {
            problems.push(format!("`{}`: `{column}` appears twice", key("keys")));
        }
    }
}

/// Resolves a path from the pipeline file against the file's directory.
pub fn resolve_path(base_dir: &Path, path: &str) -> PathBuf {
    let path = Path::new(path);
    if path.is_absolute() { path.to_owned() } else { base_dir.join(path) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(text: &str) -> Result<PipelineConfig> {
        parse(text, Path::new("inlet.toml"))
    }

    const GOOD: &str = r#"
[pipeline]
name = "shop"
lake = "lake"

[sources.orders]
type = "files"
path = "landing/orders"
format = "csv"
target = "bronze.orders"
pattern = "*.csv*"
schema = { order_id = "bigint", order_ts = "timestamp", amount = "decimal(18,2)" }
on_new_columns = "rescue"
max_files_per_commit = 10

[sources.orders.csv]
delimiter = ";"
encoding = "latin-1"
"#;

    #[test]
    fn parses_a_full_source() {
        let config = parse_str(GOOD).unwrap();
        let files = config.sources["orders"].files().unwrap();
        assert_eq!(files.format, FileFormat::Csv);
        assert_eq!(files.on_new_columns, OnNewColumns::Rescue);
        assert_eq!(files.max_files_per_commit, 10);
        assert_eq!(files.max_bytes_per_commit, 1 << 30);
        assert_eq!(files.csv.delimiter, ';');
        assert_eq!(files.csv.encoding, Encoding::Latin1);
        assert!(files.csv.header);
        assert_eq!(files.schema.len(), 3);
    }

    fn error_of(text: &str) -> String {
        parse_str(text).unwrap_err().to_string()
    }

    #[test]
    fn freshness_slas_and_the_dashboards_token_are_checked() {
        let with_sla = GOOD.replace("max_files_per_commit = 10", "max_files_per_commit = 10\nfreshness_sla_secs = 600");
        assert_eq!(parse_str(&with_sla).unwrap().sources["orders"].freshness_sla_secs(), Some(600));
        let zero =
            error_of(&GOOD.replace("max_files_per_commit = 10", "max_files_per_commit = 10\nfreshness_sla_secs = 0"));
        assert!(zero.contains("sources.orders.freshness_sla_secs"), "{zero}");
        let serve =
            |line: &str| GOOD.replace("lake = \"lake\"\n", &format!("lake = \"lake\"\n\n[pipeline.serve]\n{line}\n"));
        assert!(parse_str(&serve("token = \"${env:UI_TOKEN}\"")).is_ok());
        let literal = error_of(&serve("token = \"hunter2\""));
        assert!(literal.contains("pipeline.serve.token") && !literal.contains("hunter2"), "{literal}");
        assert_eq!(parse_str(&serve("dashboard = false")).unwrap().pipeline.serve.dashboard, Some(false));
    }

    #[test]
    fn deletion_vectors_are_for_merges_whose_keys_are_in_the_data_files() {
        let table = |settings: &str| {
            format!(
                "{GOOD}\n[tables.\"silver.t\"]\nsql = \"SELECT * FROM bronze.orders\"\n{settings}\ndeletion_vectors = true\n"
            )
        };
        let merge = parse_str(&table("write = \"merge\"\nkeys = [\"order_id\"]\npartition_by = [\"day\"]")).unwrap();
        assert!(merge.tables["silver.t"].deletion_vectors);
        let append = error_of(&table("write = \"append\""));
        assert!(append.contains("deletion_vectors") && append.contains("only for `write = \"merge\"` or"), "{append}");
        let partitioned =
            error_of(&table("write = \"merge\"\nkeys = [\"day\", \"order_id\"]\npartition_by = [\"day\"]"));
        assert!(partitioned.contains("key `day` is a partition column"), "{partitioned}");
    }

    #[test]
    fn unknown_key_names_line_and_key() {
        let err = error_of(&GOOD.replace("pattern =", "patern ="));
        assert!(err.contains("line 11"), "{err}");
        assert!(err.contains("patern"), "{err}");
    }

    #[test]
    fn wrong_type_and_unknown_format() {
        let err = error_of(&GOOD.replace("max_files_per_commit = 10", "max_files_per_commit = \"ten\""));
        assert!(err.contains("line 14"), "{err}");
        let err = error_of(&GOOD.replace("format = \"csv\"", "format = \"xml\""));
        assert!(err.contains("line 9") && err.contains("xml"), "{err}");
    }

    #[test]
    fn bad_target_bad_hint_and_duplicate_targets() {
        let err = error_of(&GOOD.replace("\"bronze.orders\"", "\"orders\""));
        assert!(err.contains("line 10") && err.contains("sources.orders.target"), "{err}");
        let err = error_of(&GOOD.replace("\"bigint\"", "\"bigit\""));
        assert!(err.contains("sources.orders.schema.order_id") && err.contains("bigit"), "{err}");
        let twice = format!(
            "{GOOD}\n[sources.more]\ntype = \"files\"\npath = \"x\"\nformat = \"ndjson\"\ntarget = \"bronze.orders\"\n"
        );
        let err = error_of(&twice);
        assert!(err.contains("sources.orders.target") || err.contains("sources.more.target"), "{err}");
        assert!(err.contains("another source"), "{err}");
    }

    #[test]
    fn schedules_and_triggers() {
        let scheduled = GOOD.replace("max_files_per_commit = 10", "trigger = \"schedule\"\nschedule = \"*/5 * * * *\"");
        let config = parse_str(&scheduled).unwrap();
        assert_eq!(config.sources["orders"].trigger(), Trigger::Schedule);
        let err = error_of(&GOOD.replace("max_files_per_commit = 10", "trigger = \"schedule\""));
        assert!(err.contains("sources.orders.schedule") && err.contains("needs a cron"), "{err}");
        let err = error_of(&GOOD.replace("max_files_per_commit = 10", "schedule = \"0 2 * * *\""));
        assert!(err.contains("line 14") && err.contains("only used with `trigger"), "{err}");
        let err = error_of(&scheduled.replace("*/5 * * * *", "*/5 * * *"));
        assert!(err.contains("line 15") && err.contains("not a cron expression"), "{err}");
        let err = error_of(&GOOD.replace("max_files_per_commit = 10", "trigger = \"cron\""));
        assert!(err.contains("line 14") && err.contains("`cron`") && err.contains("`manual`"), "{err}");
        let table = format!(
            "{GOOD}\n[pipeline.serve]\nmax_concurrent_tasks = 0\n[tables.\"gold.x\"]\nsql = \"SELECT 1\"\nrefresh = \"schedule\"\nschedule = \"0 25 * * *\"\n"
        );
        let err = error_of(&table);
        assert!(err.contains("tables.\"gold.x\".schedule") && err.contains("0 25"), "{err}");
        assert!(err.contains("max_concurrent_tasks"), "{err}");
    }

    #[test]
    fn clean_source_needs_a_destination_outside_the_source() {
        let with = |extra: &str| GOOD.replace("max_files_per_commit = 10", extra);
        let config = parse_str(&with("clean_source = \"move\"\nclean_source_move_to = \"archive/orders\"")).unwrap();
        assert_eq!(config.sources["orders"].files().unwrap().clean_source, CleanSource::Move);
        assert!(parse_str(&with("clean_source = \"delete\"")).is_ok());
        let err = error_of(&with("clean_source = \"move\""));
        assert!(err.contains("clean_source_move_to") && err.contains("needs a destination"), "{err}");
        let err = error_of(&with("clean_source = \"move\"\nclean_source_move_to = \"landing/orders/done\""));
        assert!(err.contains("inside `path`"), "{err}");
        let err = error_of(&with("clean_source = \"move\"\nclean_source_move_to = \"s3://b/archive/\""));
        assert!(err.contains("same store"), "{err}");
        let err = error_of(&with("clean_source_move_to = \"archive\""));
        assert!(err.contains("only used with"), "{err}");
    }

    #[test]
    fn notifications_need_a_queue_and_an_s3_path() {
        let with = |extra: &str| GOOD.replace("max_files_per_commit = 10", extra);
        let err = error_of(&with("discovery = \"notifications\""));
        assert!(err.contains("queue_url") && err.contains("needs"), "{err}");
        let err = error_of(&with("discovery = \"notifications\"\nqueue_url = \"http://q\""));
        assert!(err.contains("s3://"), "{err}");
        let err = error_of(&with("queue_url = \"http://q\""));
        assert!(err.contains("only used with"), "{err}");
        let s3 = GOOD.replace("landing/orders", "s3://drops/orders/");
        let ok = s3.replace("max_files_per_commit = 10", "discovery = \"notifications\"\nqueue_url = \"http://q\"");
        assert_eq!(parse_str(&ok).unwrap().sources["orders"].files().unwrap().discovery, Discovery::Notifications);
        let short = ok.replace("discovery =", "visibility_timeout_secs = 10\ndiscovery =");
        assert_eq!(parse_str(&short).unwrap().sources["orders"].files().unwrap().visibility_timeout_secs, Some(10));
        let err = error_of(&with("visibility_timeout_secs = 120"));
        assert!(err.contains("only used with"), "{err}");
        let err = error_of(&ok.replace("discovery =", "visibility_timeout_secs = 2\ndiscovery ="));
        assert!(err.contains("visibility_timeout_secs") && err.contains("4 to 43200"), "{err}");
        let err = error_of(&with("visibility_timeout_secs = 10"));
        assert!(err.contains("visibility_timeout_secs") && err.contains("only used with"), "{err}");
    }

    const REST: &str = r#"
[pipeline]
name = "api"

[sources.issues]
type = "rest"
target = "bronze.issues"
base_url = "http://127.0.0.1:8080/api/"
path = "issues"
params = { state = "all" }
auth = { type = "bearer", token = "${env:API_TOKEN}" }
paginator = { type = "json_link", next_url_path = "links.next" }
data_selector = "data"
primary_key = ["id"]
incremental = { cursor_path = "updated_at", initial_value = "2024-01-01T00:00:00Z", param = "since", lag_secs = 60 }
requests_per_second = 20
schema = { id = "bigint", updated_at = "timestamptz" }
"#;

    #[test]
    fn parses_a_rest_source() {
        let config = parse_str(REST).unwrap();
        let source = &config.sources["issues"];
        assert_eq!(source.kind(), SourceKind::Rest);
        assert_eq!(source.target(), "bronze.issues");
        assert_eq!(source.trigger(), Trigger::Manual, "no schedule: `inlet run` only");
        assert_eq!(source.provenance(), crate::schema::Provenance::Requests);
        let rest = source.rest().unwrap();
        assert!(matches!(&rest.auth, Some(Auth::Bearer { token }) if token == "${env:API_TOKEN}"));
        assert!(matches!(&rest.paginator, Paginator::JsonLink { next_url_path } if next_url_path == "links.next"));
        assert_eq!(rest.incremental.as_ref().unwrap().lag_secs, 60);
        assert_eq!(rest.request_timeout_secs, 30);
        assert_eq!(rest.max_records_per_commit, 100_000);
        let scheduled = parse_str(&format!("{REST}schedule = \"*/5 * * * *\"\n")).unwrap();
        assert_eq!(scheduled.sources["issues"].trigger(), Trigger::Schedule);
        // A TOML timestamp works as an initial value too.
        let dated = REST.replace("initial_value = \"2024-01-01T00:00:00Z\"", "initial_value = 2024-01-01T00:00:00Z");
        assert!(parse_str(&dated).is_ok());
    }

    #[test]
    fn rest_mistakes_name_their_key() {
        let err = error_of(&REST.replace("${env:API_TOKEN}", "s3cr3t"));
        assert!(err.contains("sources.issues.auth.token") && err.contains("${env:NAME}"), "{err}");
        assert!(!err.contains("s3cr3t"), "{err}");
        let err = error_of(&REST.replace("paginator =", "pagintor ="));
        assert!(err.contains("line 12") && err.contains("pagintor"), "{err}");
        let err = error_of(&REST.replace("type = \"rest\"", "type = \"soap\""));
        assert!(err.contains("line 6") && err.contains("`soap` is not a kind of source"), "{err}");
        let err = error_of(&REST.replace("path = \"issues\"", "path = \"repos/{resources.repos.name}/issues\""));
        assert!(err.contains("sources.issues.path") && err.contains("names no field"), "{err}");
        let err = error_of(&REST.replace(", param = \"since\"", ""));
        assert!(err.contains("sources.issues.incremental") && err.contains("never sent"), "{err}");
        let placeholder = REST
            .replace(", param = \"since\"", "")
            .replace("params = { state = \"all\" }", "params = { since = \"{incremental.start_value}\" }");
        assert!(parse_str(&placeholder).is_ok());
        let err = error_of(&REST.replace(
            "paginator = { type = \"json_link\", next_url_path = \"links.next\" }",
            "paginator = { type = \"offset\", limit = 10, stop_after_empty_page = false }",
        ));
        assert!(err.contains("nothing would end the pages"), "{err}");
        let err = error_of(&REST.replace("data_selector = \"data\"", "data_selector = \"$..data\""));
        assert!(err.contains("sources.issues.data_selector") && err.contains("recursive descent"), "{err}");
        let err = error_of(&format!("{REST}trigger = \"watch\"\n"));
        assert!(err.contains("sources.issues.trigger"), "{err}");
        let err = error_of(&REST.replace(
            "paginator = { type = \"json_link\", next_url_path = \"links.next\" }",
            "paginator = { type = \"cursor\", cursor_path = \"next\" }",
        ));
        assert!(err.contains("cursor_param") && err.contains("cursor_body_path"), "{err}");
        let err = error_of(&format!("{REST}parent = \"repos\"\n"));
        assert!(err.contains("there is no source `repos`"), "{err}");
        let two = format!(
            "{REST}parent = \"other\"\n\n[sources.other]\ntype = \"rest\"\ntarget = \"bronze.other\"\nbase_url = \"http://h/\"\nparent = \"issues\"\n"
        );
        let err = error_of(&two);
        assert!(err.contains("form a cycle"), "{err}");
        let err = error_of(&REST.replace("http://127.0.0.1:8080/api/", "ftp://h/"));
        assert!(err.contains("sources.issues.base_url"), "{err}");
        let err = error_of(&format!("{REST}headers = {{ If-Modified-Since = \"{{incremental.start_value}}\" }}\n"));
        assert!(err.contains("sources.issues.headers.If-Modified-Since") && err.contains("no placeholders"), "{err}");
        let err = error_of(&REST.replace("lag_secs = 60", "lag_secs = 100000000000"));
        assert!(err.contains("sources.issues.incremental.lag_secs"), "{err}");
        let err = error_of(&REST.replace("requests_per_second = 20", "requests_per_second = 1e-20"));
        assert!(err.contains("sources.issues.requests_per_second"), "{err}");
        // A child must ask something of its parent.
        let child = format!(
            "{REST}\n[sources.comments]\ntype = \"rest\"\ntarget = \"bronze.comments\"\nbase_url = \"http://h/\"\npath = \"comments\"\nparent = \"issues\"\n"
        );
        let err = error_of(&child);
        assert!(err.contains("sources.comments.parent") && err.contains("no request names a field"), "{err}");
        let body = child.replace(
            "path = \"comments\"",
            "method = \"post\"\npath = \"comments\"\njson = { filter = { issue = \"{resources.issues.id}\" } }",
        );
        assert!(parse_str(&body).is_ok(), "{}", error_of(&body));
    }

    #[test]
    fn table_names() {
        assert_eq!(TableName::parse("bronze.orders").unwrap().to_string(), "bronze.orders");
        assert!(TableName::parse("Bronze.orders").is_none());
        assert!(TableName::parse("bronze.").is_none());
        assert!(TableName::parse("bronze.a.b").is_none());
        assert!(TableName::parse("bronze.a__quarantine").is_none());
        assert_eq!(TableName::parse("silver.x1").unwrap().quarantine().to_string(), "silver.x1__quarantine");
    }

    #[test]
    fn a_postgres_source_of_several_tables_is_one_source_per_table() {
        let config = parse_str(
            "[pipeline]\nname = \"p\"\nlake = \"lake\"\n[sources.pg]\ntype = \"postgres\"\nurl = \"${env:PG_URL}\"\ntables = [\"public.orders\", \"sales.customers\"]\ntarget_prefix = \"bronze.pg_\"\nmode = \"cdc\"\nslot = \"inlet_pg\"\n",
        )
        .unwrap();
        let names: Vec<&String> = config.sources.keys().collect();
        assert_eq!(names, ["pg.orders", "pg.sales_customers"]);
        let orders = config.sources["pg.orders"].postgres().unwrap();
        assert_eq!(config.sources["pg.orders"].target(), "bronze.pg_orders");
        assert_eq!(config.sources["pg.sales_customers"].target(), "bronze.pg_sales_customers");
        assert_eq!(
            (orders.slot_name(), orders.publication_name()),
            ("inlet_pg_orders".into(), "inlet_p_pg_orders".into())
        );
        assert_eq!(orders.trigger(), Trigger::Watch);
    }

    #[test]
    fn postgres_sources_refuse_what_cannot_work() {
        let source = |body: &str| {
            parse_str(&format!(
                "[pipeline]\nname = \"p\"\nlake = \"lake\"\n[sources.pg]\ntype = \"postgres\"\n{body}\n"
            ))
            .unwrap_err()
            .to_string()
        };
        let inline = source("url = \"postgres://u:secret@h/db\"\ntables = [\"t\"]\ntarget_prefix = \"bronze.pg_\"");
        assert!(inline.contains("${env:NAME}") && !inline.contains("secret"), "{inline}");
        let query =
            source("url = \"postgres://u@h/db?password=secret\"\ntables = [\"t\"]\ntarget_prefix = \"bronze.pg_\"");
        assert!(query.contains("${env:NAME}") && !query.contains("secret"), "{query}");
        let query = source("url = \"${env:U}\"\nquery = \"SELECT 1\"");
        assert!(query.contains("target"), "{query}");
        let cursor =
            source("url = \"${env:U}\"\ntables = [\"t\"]\ntarget_prefix = \"bronze.pg_\"\nmode = \"incremental\"");
        assert!(cursor.contains("cursor_column"), "{cursor}");
        let name = source("url = \"${env:U}\"\ntables = [\"Bad-Name\"]\ntarget_prefix = \"bronze.pg_\"");
        assert!(name.contains("Bad-Name"), "{name}");
    }
}
