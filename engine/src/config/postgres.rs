//! `type = "postgres"`: tables (or a query) of a PostgreSQL database, loaded whole, by a
//! cursor column, or from the write-ahead log.
//!
//! A source naming several `tables` is one source per table once read: `pg` with
//! `tables = ["public.orders"]` becomes the source `pg.orders`, landing in
//! `<target_prefix>orders`. Each has its own position in its own table's log (and, for
//! `cdc`, its own replication slot and publication), so one table never holds another back.

use serde::Deserialize;
use toml::Spanned;

use super::{OnNewColumns, SourceKind, Trigger, env_reference};

/// One PostgreSQL table, or a query, as a source.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresSource {
    /// Kind of source: `postgres`.
    #[serde(rename = "type")]
    pub kind: SourceKind,
    /// `postgres://user@host:port/database`, as `${env:NAME}` when it holds a password.
    pub url: String,
    /// Tables to load, `schema.table` (`public` when no schema is named).
    #[serde(default)]
    pub tables: Vec<String>,
    /// Target of each table: this prefix and the table's name (`bronze.pg_` makes `bronze.pg_orders`).
    #[serde(default)]
    pub target_prefix: Option<Spanned<String>>,
    /// A query instead of tables (`full` or `incremental`), landing in `target`.
    #[serde(default)]
    pub query: Option<String>,
    /// Target table of a `query`.
    #[serde(default)]
    pub target: Option<Spanned<String>>,
    /// How rows are read.
    #[serde(default)]
    pub mode: PostgresMode,
    /// `incremental`: the column rows are read by (a timestamp, a date or an integer).
    #[serde(default)]
    pub cursor_column: Option<String>,
    /// `incremental`: read again this far behind the last cursor value committed, for rows
    /// committed late with an earlier value; rows read twice are dropped by primary key.
    #[serde(default)]
    pub lag_secs: u64,
    /// Columns naming a row; the table's primary key (from the catalog) when empty.
    #[serde(default)]
    pub primary_key: Vec<String>,
    /// `cdc`: the logical replication slot; `inlet_<pipeline>_<source>` when absent. A source
    /// of several tables has one slot per table, this name and the table's.
    #[serde(default)]
    pub slot: Option<String>,
    /// `cdc`: the publication; named and split like `slot`.
    #[serde(default)]
    pub publication: Option<String>,
    /// Rows read per primary-key range of a full load or a snapshot.
    #[serde(default = "default_rows_per_chunk")]
    pub rows_per_chunk: u64,
    /// Rows in one commit at most (a CDC commit ends at a transaction's end only).
    #[serde(default = "default_max_records_per_commit")]
    pub max_records_per_commit: u64,
    /// `cdc`: once the slot's confirmed position is this far behind the WAL with nothing of
    /// the table in between, a commit without rows moves the position on, so an idle table
    /// does not pin the WAL.
    #[serde(default = "default_idle_advance_bytes")]
    pub idle_advance_bytes: u64,
    /// `inlet serve`: how often a `cdc` source reads the slot.
    #[serde(default = "default_poll_interval_ms")]
    pub poll_interval_ms: u64,
    /// What to do with columns the table does not have yet.
    #[serde(default)]
    pub on_new_columns: OnNewColumns,
    /// `inlet serve`: `watch` (poll every `poll_interval_ms`, the default for `cdc`),
    /// `schedule` (the default with a `schedule`) or `manual`.
    #[serde(default)]
    pub trigger: Option<Trigger>,
    /// Cron expression (UTC) for `inlet serve`.
    #[serde(default)]
    pub schedule: Option<Spanned<String>>,
    /// The source is stale when its newest committed data is older than this.
    #[serde(default)]
    pub freshness_sla_secs: Option<u64>,
    /// Expectations checked on the rows of each commit.
    #[serde(default)]
    pub expect: Vec<inlet_quality::Expectation>,
    /// The one table this source reads once split (`schema.table`); `None` for a query.
    #[serde(skip)]
    pub table: Option<QualifiedName>,
    /// The source as written in the file, before it was split by table.
    #[serde(skip)]
    pub group: String,
    /// The pipeline's name: default slot names carry it, so two pipelines reading one
    /// database do not take each other's slot.
    #[serde(skip)]
    pub pipeline: String,
    /// The table it lands in: `target`, or `target_prefix` and the table's name.
    #[serde(skip, default = "no_target")]
    pub resolved_target: Spanned<String>,
}

/// How a PostgreSQL source reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PostgresMode {
    /// Every row, from one consistent snapshot, each run.
    #[default]
    Full,
    /// Rows whose `cursor_column` reached the last value committed (less `lag_secs`).
    Incremental,
    /// A snapshot, then every change from the write-ahead log (logical replication).
    Cdc,
}

/// `schema.table`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QualifiedName {
    pub schema: String,
    pub name: String,
}

impl QualifiedName {
    /// `orders` is `public.orders`; quoting is not supported (names are lowercase identifiers).
    pub fn parse(text: &str) -> Option<QualifiedName> {
        let (schema, name) = text.split_once('.').unwrap_or(("public", text));
        let ident = |s: &str| {
            s.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
                && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        };
        (ident(schema) && ident(name)).then(|| QualifiedName { schema: schema.to_owned(), name: name.to_owned() })
    }

    /// The name inlet gives things of this table: `orders`, or `sales_orders` outside `public`.
    pub fn short(&self) -> String {
        if self.schema == "public" { self.name.clone() } else { format!("{}_{}", self.schema, self.name) }
    }
}

impl std::fmt::Display for QualifiedName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.schema, self.name)
    }
}

impl PostgresSource {
    /// What starts the source under `inlet serve`.
    pub fn trigger(&self) -> Trigger {
        self.trigger.unwrap_or(if self.schedule.is_some() {
            Trigger::Schedule
        } else if self.mode == PostgresMode::Cdc {
            Trigger::Watch
        } else {
            Trigger::Manual
        })
    }

    /// The replication slot of this (split) source.
    pub fn slot_name(&self) -> String {
        self.per_table(self.slot.as_deref())
    }

    /// The publication of this (split) source.
    pub fn publication_name(&self) -> String {
        self.per_table(self.publication.as_deref())
    }

    fn per_table(&self, given: Option<&str>) -> String {
        let base = given
            .map_or_else(|| format!("inlet_{}_{}", sanitize(&self.pipeline), sanitize(&self.group)), str::to_owned);
        let name = match &self.table {
            Some(table) if self.tables.len() > 1 => format!("{base}_{}", table.short()),
            _ => base,
        };
        // PostgreSQL names are at most 63 bytes; a longer one keeps its end unique by hash.
        if name.len() <= 63 {
            name
        } else {
            let hash = name.bytes().fold(0xcbf29ce484222325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100000001b3));
            format!("{}_{:08x}", &name[..54], hash as u32)
        }
    }
}

fn sanitize(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' }).collect()
}

/// Until `split` sets it.
fn no_target() -> Spanned<String> {
    Spanned::new(0..0, String::new())
}

fn default_rows_per_chunk() -> u64 {
    100_000
}

fn default_max_records_per_commit() -> u64 {
    500_000
}

fn default_idle_advance_bytes() -> u64 {
    16 * 1024 * 1024
}

fn default_poll_interval_ms() -> u64 {
    500
}

/// Splits a source of several tables into one source per table, named `<source>.<table>`.
pub(super) fn split(
    pipeline: &str,
    name: &str,
    source: PostgresSource,
) -> Result<Vec<(String, PostgresSource)>, String> {
    let mut source = source;
    source.group = name.to_owned();
    source.pipeline = pipeline.to_owned();
    if source.query.is_some() {
        if !source.tables.is_empty() {
            return Err(format!("`sources.{name}`: give `tables` or `query`, not both"));
        }
        if source.target.is_none() {
            return Err(format!("`sources.{name}.target`: a `query` needs the table it lands in"));
        }
        source.resolved_target = source.target.clone().unwrap_or_else(no_target);
        return Ok(vec![(name.to_owned(), source)]);
    }
    if source.tables.is_empty() {
        return Err(format!("`sources.{name}`: name the `tables` to read, or a `query`"));
    }
    if source.target.is_some() {
        return Err(format!("`sources.{name}.target`: tables land in `target_prefix` and their name"));
    }
    let Some(prefix) = source.target_prefix.clone() else {
        return Err(format!("`sources.{name}.target_prefix`: needed with `tables` (e.g. `bronze.pg_`)"));
    };
    let mut split = Vec::new();
    for table in &source.tables {
        let Some(qualified) = QualifiedName::parse(table) else {
            return Err(format!(
                "`sources.{name}.tables`: `{table}` is not `schema.table` in lowercase letters, digits and `_`"
            ));
        };
        let mut one = source.clone();
        one.resolved_target = Spanned::new(prefix.span(), format!("{}{}", prefix.get_ref(), qualified.short()));
        let split_name =
            if source.tables.len() == 1 { name.to_owned() } else { format!("{name}.{}", qualified.short()) };
        one.table = Some(qualified);
        split.push((split_name, one));
    }
    Ok(split)
}

/// What serde cannot check.
pub(super) fn validate(name: &str, source: &PostgresSource) -> Vec<String> {
    let key = |field: &str| format!("sources.{}.{field}", source.group);
    let mut problems = Vec::new();
    if env_reference(&source.url).is_none() {
        match url::Url::parse(&source.url) {
            Ok(url) if matches!(url.scheme(), "postgres" | "postgresql") => {
                if url.password().is_some() || url.query_pairs().any(|(k, _)| k == "password") {
                    problems.push(format!(
                        "`{}`: a URL with a password must come from the environment, as `${{env:NAME}}`",
                        key("url")
                    ));
                }
            }
            _ => problems.push(format!("`{}`: not a `postgres://` URL or `${{env:NAME}}`", key("url"))),
        }
    }
    match source.mode {
        PostgresMode::Incremental if source.cursor_column.is_none() => {
            problems.push(format!("`{}`: `incremental` needs the column rows are read by", key("cursor_column")));
        }
        PostgresMode::Cdc if source.query.is_some() => {
            problems.push(format!("`{}`: `cdc` reads tables, not a query", key("query")));
        }
        _ => {}
    }
    if source.mode != PostgresMode::Incremental && (source.cursor_column.is_some() || source.lag_secs > 0) {
        problems.push(format!("`{}`: `cursor_column` and `lag_secs` are for `mode = \"incremental\"`", key("mode")));
    }
    if source.mode != PostgresMode::Cdc && (source.slot.is_some() || source.publication.is_some()) {
        problems.push(format!("`{}`: `slot` and `publication` are for `mode = \"cdc\"`", key("mode")));
    }
    for (field, given) in [("slot", &source.slot), ("publication", &source.publication)] {
        if let Some(given) = given
            && (given.is_empty() || !given.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
        {
            problems.push(format!("`{}`: `{given}` is not lowercase letters, digits and `_`", key(field)));
        }
    }
    if source.rows_per_chunk == 0 || source.max_records_per_commit == 0 || source.poll_interval_ms == 0 {
        problems.push(format!(
            "`sources.{name}`: `rows_per_chunk`, `max_records_per_commit` and `poll_interval_ms` must be at least 1"
        ));
    }
    if source.query.is_some() && source.mode == PostgresMode::Incremental && source.primary_key.is_empty() {
        problems.push(format!("`{}`: an incremental `query` needs the columns naming a row", key("primary_key")));
    }
    problems
}
