//! Full and incremental loads: a table (or query) read in one snapshot, in key order.
//!
//! A full load reads every row, in primary-key order; each page's position holds the key
//! of its last row, so a killed load resumes after it (in a newer snapshot: the one it
//! started in ended with its session). A relation without a key is read in one commit.
//!
//! An incremental load reads rows whose cursor is at least the last value committed, less
//! `lag_secs`, in cursor then key order. Rows within the lag of the mark are remembered (by
//! a hash of key and cursor) in the position, so one read again is dropped, while a row
//! committed late with an earlier cursor, or updated to the same one, is taken.

use std::collections::{BTreeSet, HashSet};

use inlet_engine::config::{PostgresMode, QualifiedName};
use inlet_engine::source::{Extraction, Page, SourceError};
use tokio_postgres::Client;
use tracing::{info, warn};

use super::catalog::Relation;
use super::connect::{ident, literal};
use super::position::{CursorMark, Load, Position};
use super::scan::{Scan, Scanning, begin_snapshot};
use super::types::PgType;
use super::{Context, PAGE_ROWS};
use crate::Error;

/// A full or incremental load in progress.
pub struct Loading {
    context: Context,
    client: Client,
    scanning: Scanning,
    position: Position,
    pages: i64,
    /// Incremental: how the cursor is compared, and rows already landed.
    cursor: Option<CursorState>,
    /// Whether the relation has a key to resume by: each page is then a cut.
    keyed: bool,
    done: bool,
}

struct CursorState {
    lag: i64,
    /// (number, hash) of rows landed near the mark, before this run.
    landed: HashSet<String>,
    /// The mark as it moves, and rows landed within the lag of it.
    mark: Option<CursorMark>,
}

impl Loading {
    pub async fn start(context: Context, mut position: Position) -> Result<Loading, SourceError> {
        let db = &context.db;
        let config = &context.config;
        let client = db.connect().await?;
        let relation = match (&config.table, &config.query) {
            (Some(table), _) => Relation::table(db, &client, table, &config.primary_key, true).await?,
            (None, Some(query)) => Relation::query(db, &client, query, &config.primary_key).await?,
            (None, None) => return Err(Error::Internal(format!("source `{}` has no table", context.name)).into()),
        };
        // One snapshot for every chunk of the run; a new full load of one of a source's
        // tables shares it with the others ([`super::shared`]).
        let fresh_full = matches!(config.mode, PostgresMode::Full) && position.load.is_none();
        let tables: BTreeSet<String> =
            config.tables.iter().filter_map(|t| QualifiedName::parse(t)).map(|t| t.to_string()).collect();
        let (snapshot, _) = match &config.table {
            Some(table) if fresh_full && tables.len() > 1 => {
                let source = format!("{}.{}", config.pipeline, config.group);
                super::shared::begin_shared(db, &client, &source, &table.to_string(), &tables).await?
            }
            _ => begin_snapshot(db, &client, false).await?,
        };
        let keyed = !relation.primary_key.is_empty();
        let relation = std::sync::Arc::new(relation);
        let (scanning, cursor) = match config.mode {
            PostgresMode::Incremental => incremental(&context, relation, &position)?,
            _ => {
                let after = match &position.load {
                    Some(load) => {
                        warn!(source = %context.name, rows = load.rows, "resuming an interrupted full load after its last key, in a newer snapshot");
                        load.after.clone()
                    }
                    None => {
                        position.load = Some(Load { after: None, rows: 0, snapshot: snapshot.clone() });
                        None
                    }
                };
                let scan = Scan {
                    relation: relation.clone(),
                    key: relation.primary_key.clone(),
                    extra: Vec::new(),
                    filter: None,
                    rows_per_chunk: config.rows_per_chunk,
                    snapshot: None,
                };
                if !keyed {
                    info!(source = %context.name, table = %relation.name, "no primary key: the table is read in one commit");
                }
                (Scanning::new(scan, after), None)
            }
        };
        Ok(Loading { context, client, scanning, position, pages: 0, cursor, keyed, done: false })
    }
}

/// The scan of an incremental load, and its cursor state.
fn incremental(
    context: &Context,
    relation: std::sync::Arc<Relation>,
    position: &Position,
) -> Result<(Scanning, Option<CursorState>), Error> {
    let config = &context.config;
    let db = &context.db;
    let what = format!("source `{}`", context.name);
    let cursor = config.cursor_column.clone().unwrap_or_default();
    let column = relation.column(&cursor).ok_or_else(|| {
        db.refuse(&what, format!("the cursor column `{cursor}` is not a column of `{}`", relation.name))
    })?;
    if relation.primary_key.is_empty() {
        return Err(db.refuse(
            &what,
            format!("`{}` has no primary key: name the columns of a row in `primary_key`", relation.name),
        ));
    }
    let quoted = ident(&cursor);
    let (number, time) = match column.ty {
        PgType::Timestamp | PgType::TimestampTz | PgType::Date => {
            (format!("(extract(epoch from {quoted}) * 1000000)::int8::text"), true)
        }
        PgType::Int2 | PgType::Int4 | PgType::Int8 => (format!("{quoted}::int8::text"), false),
        _ => {
            return Err(db.refuse(
                &what,
                format!(
                    "the cursor column `{cursor}` is `{}`; a timestamp, a date or an integer is needed",
                    column.type_name
                ),
            ));
        }
    };
    if !time && config.lag_secs > 0 {
        return Err(db.refuse(&what, "`lag_secs` needs a timestamp or date cursor"));
    }
    let lag = (config.lag_secs as i64).saturating_mul(1_000_000);
    // A row without a cursor value is never read: it has no place in the cursor's order.
    let filter = Some(match &position.cursor {
        Some(mark) => {
            let value = format!("{}::{}", literal(&mark.value), ident(&column.type_name));
            if time && config.lag_secs > 0 {
                format!("{quoted} >= {value} - interval '{} seconds'", config.lag_secs)
            } else {
                format!("{quoted} >= {value}")
            }
        }
        None => format!("{quoted} IS NOT NULL"),
    });
    let mut key = vec![cursor];
    key.extend(relation.primary_key.iter().cloned());
    let scan =
        Scan { relation, key, extra: vec![number], filter, rows_per_chunk: config.rows_per_chunk, snapshot: None };
    let landed = position.cursor.iter().flat_map(|m| m.seen.iter().map(|(_, h)| h.clone())).collect();
    let state = CursorState { lag, landed, mark: position.cursor.clone() };
    Ok((Scanning::new(scan, None), Some(state)))
}

/// FNV-1a of the key's and cursor's text: what names a row landed near the mark.
fn row_hash(texts: &[Option<&str>]) -> String {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for text in texts {
        for byte in text.unwrap_or("\u{0}null").bytes().chain([0x1f]) {
            hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{hash:016x}")
}

#[async_trait::async_trait]
impl Extraction for Loading {
    async fn next_page(&mut self) -> Result<Option<Page>, SourceError> {
        if self.done {
            return Ok(None);
        }
        let Loading { context, client, scanning, cursor, .. } = self;
        let mut accept = |texts: &[Option<&str>]| -> bool {
            let Some(state) = cursor.as_mut() else { return true };
            // texts: cursor, key..., cursor number.
            let (Some(value), Some(number)) = (texts[0], texts.last().copied().flatten()) else {
                // A row without a cursor value is never read by `>=`; keep it if it was.
                return true;
            };
            let number: i64 = number.parse().unwrap_or_default();
            let hash = row_hash(&texts[..texts.len() - 1]);
            if state.landed.contains(&hash) {
                return false;
            }
            let mark = state.mark.get_or_insert_with(CursorMark::default);
            if mark.value.is_empty() || number >= mark.number {
                mark.value = value.to_owned();
                mark.number = number;
            }
            mark.seen.push((number, hash));
            true
        };
        let page = scanning.next_page(&context.db, client, PAGE_ROWS, &mut accept).await?;
        let Some(page) = page else {
            self.done = true;
            return Ok(None);
        };
        self.pages += 1;
        let rows = page.rows;
        if let Some(state) = self.cursor.as_mut() {
            if let Some(mark) = state.mark.as_mut() {
                let floor = mark.number.saturating_sub(state.lag);
                mark.seen.retain(|(number, _)| *number >= floor);
            }
            self.position.cursor.clone_from(&state.mark);
        } else if page.exhausted {
            self.position.load = None;
            self.position.loads += 1;
        } else if let Some(load) = self.position.load.as_mut() {
            load.after.clone_from(&page.last_key);
            load.rows += rows;
        }
        if page.exhausted {
            self.done = true;
            // Ends the read-only transaction; the session closes with the extraction.
            let _ = self.client.batch_execute("COMMIT").await;
        }
        let chunk = page.chunk;
        let position = serde_json::to_value(&self.position)
            .map_err(|e| Error::Internal(format!("source `{}`: position: {e}", self.context.name)))?;
        // Without a key a load cannot resume in the middle: only its end is a cut.
        let cut = self.keyed || page.exhausted;
        Ok(Some(Page {
            url: self.context.unit.clone(),
            number: self.pages,
            bytes: page.bytes,
            chunk,
            position,
            cut,
            derive: None,
        }))
    }
}
