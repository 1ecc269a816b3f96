//! Change data capture: a snapshot of the table, then its changes from a logical
//! replication slot, whole transactions at a time.
//!
//! - **Start** ([`super::slot`]). The publication (`FOR TABLE`) and the `pgoutput` slot
//!   are created when absent. A table whose replica identity cannot name a deleted row is
//!   refused, with the fix in the message.
//! - **Handoff.** The slot is created first; its consistent point is where changes begin.
//!   The snapshot is taken after, so it may already hold transactions the slot also gives:
//!   the snapshot's visibility (`pg_current_snapshot()`) says which, and those are skipped.
//!   Nothing is lost (everything after the consistent point is in the slot) and nothing is
//!   doubled (what the snapshot saw is skipped).
//! - **Streaming.** Each run reads the slot up to the WAL flushed when it started
//!   (`pg_logical_slot_peek_binary_changes`, which leaves the slot where it is), and hands
//!   pages to the engine; a page is a cut only at a transaction's end, so a commit holds
//!   whole transactions, and the last LSN it holds is its position.
//! - **Acknowledging.** The slot is moved (`pg_replication_slot_advance`) to the position
//!   of the table's latest commit when the next run starts: never past what the table
//!   holds. A restart resumes there and skips transactions that ended at or before it.
//! - **Idle.** When the slot is `idle_advance_bytes` behind with nothing of the table in
//!   between, a commit without rows moves the position to the WAL's end, so the next run
//!   moves the slot and the WAL is not pinned.
//! - **Starting over** (`inlet resnapshot`, for a slot that was lost). The old slot is
//!   dropped and a new snapshot taken as at the first run; the engine has its first commit
//!   replace the table's rows. The new snapshot's `_lsn` is where the replaced log stood, so
//!   a merge by `_lsn` takes its rows over what it kept. Keys live in the replaced log but
//!   not in the new snapshot were deleted while no slot was read: after the snapshot, a page
//!   derived from the table lands a delete for each, so merges over the log drop them too.

use std::pin::Pin;
use std::sync::Arc;

use futures::StreamExt;
use inlet_engine::source::{Derive, Extraction, Lag, Page, SourceError};
use tokio_postgres::{Client, RowStream};
use tracing::{info, warn};

use super::catalog::Relation;
use super::connect::literal;
use super::pgoutput::{Message, RelationColumn, parse};
use super::position::{Load, Position, Resnapshot, Stream, lsn_text, parse_lsn};
use super::rows::{Change, Rows, Value};
use super::scan::{Scan, Scanning, begin_snapshot};
use super::slot::{self, Opened};
use super::types::{Column, PgType, text_of};
use super::{Context, PAGE_ROWS};
use crate::Error;

/// A CDC extraction: the snapshot (when one is due), then the slot.
pub struct Capture {
    context: Context,
    client: Client,
    relation: Arc<Relation>,
    position: Position,
    slot: String,
    publication: String,
    snapshot: Option<Scanning>,
    /// A restart's deletes of the keys the new snapshot lacks, due once it is in.
    reconcile: Option<Derive>,
    stream: Option<Streaming>,
    pages: i64,
    done: bool,
    /// How far behind the slot the stream began.
    lag: Option<Lag>,
}

/// Reading the slot.
struct Streaming {
    rows: Pin<Box<RowStream>>,
    /// The WAL's end when the run started: the slot is read up to it.
    upto: u64,
    /// The relation's id in the log, once a `Relation` message named it.
    relation_id: Option<u32>,
    columns: Arc<Vec<Column>>,
    page: Rows,
    /// The transaction being read.
    transaction: Option<Transaction>,
    /// The end of the last transaction of the table read whole.
    landed: u64,
    /// Whether any transaction of the table was read.
    read_any: bool,
    bytes: u64,
    ended: bool,
}

/// A transaction as its `Begin` says.
#[derive(Clone, Copy)]
struct Transaction {
    commit_micros: i64,
    xid: u32,
    /// Landed before (at or below the position), or seen by the snapshot.
    skip: bool,
    /// Whether it changed the table (PostgreSQL 14 sends empty transactions too).
    touched: bool,
}

impl Capture {
    pub async fn start(context: Context, mut position: Position) -> Result<Capture, SourceError> {
        let db = &context.db;
        let config = &context.config;
        let table = config
            .table
            .clone()
            .ok_or_else(|| Error::Internal(format!("source `{}`: cdc without a table", context.name)))?;
        let client = db.connect().await?;
        // Generated columns are not in the log: they are left out of the snapshot too.
        let relation = Relation::table(db, &client, &table, &config.primary_key, false).await?;
        slot::check_table(&context, &client, &relation).await?;
        let slot = config.slot_name();
        let publication = config.publication_name();
        slot::ensure_publication(&context, &client, &publication, &relation).await?;
        let relation = Arc::new(relation);
        let mut snapshot = None;
        // The snapshot's `_lsn`: 0 at the first run, where the replaced log stood after a restart.
        let floor = position.resnapshot.map_or(0, |r| r.lsn);
        match slot::open(&context, &client, &slot, position.stream.as_ref()).await? {
            Opened::Created { consistent } => {
                let (text, filter) = begin_snapshot(db, &client, false).await?;
                let columns = relation.columns.iter().map(|c| (c.name.clone(), c.oid)).collect();
                position.stream = Some(Stream { slot: slot.clone(), lsn: consistent, snapshot: Some(filter), columns });
                position.load = Some(Load { after: None, rows: 0, snapshot: text });
                snapshot = Some(snapshot_scan(&context, &relation, None, floor));
            }
            Opened::Resumed => {
                if let Some(load) = &position.load {
                    warn!(source = %context.name, rows = load.rows, "resuming an interrupted snapshot after its last key, in a newer snapshot");
                    begin_snapshot(db, &client, false).await?;
                    snapshot = Some(snapshot_scan(&context, &relation, load.after.clone(), floor));
                }
            }
        }
        let reconcile = match position.resnapshot {
            Some(restart) if relation.primary_key.is_empty() => {
                warn!(source = %context.name, version = restart.before_version, "a table without a key cannot be reconciled with its replaced log: rows deleted while no slot was read are not marked deleted");
                position.resnapshot = None;
                None
            }
            Some(restart) => Some(reconcile(&relation, restart)),
            None => None,
        };
        let mut capture = Capture {
            context,
            client,
            relation,
            position,
            slot,
            publication,
            snapshot,
            reconcile,
            stream: None,
            pages: 0,
            done: false,
            lag: None,
        };
        if capture.snapshot.is_none() && capture.reconcile.is_none() {
            capture.start_stream().await?;
        }
        Ok(capture)
    }

    /// Starts reading the slot, up to the WAL flushed now (what decoding can read: a commit
    /// written but not flushed is read next run, never stepped over).
    async fn start_stream(&mut self) -> Result<(), Error> {
        let db = &self.context.db;
        let what = format!("slot `{}`", self.slot);
        let row = self
            .client
            .query_one(
                "SELECT pg_current_wal_flush_lsn()::text, \
                   (SELECT restart_lsn::text FROM pg_replication_slots WHERE slot_name = $1)",
                &[&self.slot],
            )
            .await
            .map_err(|e| db.error(&what, &e))?;
        let (upto, restart): (String, Option<String>) = (row.get(0), row.get(1));
        let upto = parse_lsn(&upto).ok_or_else(|| db.fail(&what, format!("an LSN `{upto}`")))?;
        let landed = self.position.stream.as_ref().map_or(0, |s| s.lsn);
        let retained = restart.as_deref().and_then(parse_lsn).map_or(0, |r| upto.saturating_sub(r));
        self.lag = Some(Lag { bytes: upto.saturating_sub(landed), seconds: 0.0, retained_bytes: retained });
        let statement = format!(
            "SELECT lsn::text, data FROM pg_logical_slot_peek_binary_changes({}, {}::pg_lsn, NULL, \
             'proto_version', '1', 'publication_names', {}, 'binary', 'true')",
            literal(&self.slot),
            literal(&lsn_text(upto)),
            literal(&self.publication)
        );
        let rows = self
            .client
            .query_raw(statement.as_str(), std::iter::empty::<&(dyn tokio_postgres::types::ToSql + Sync)>())
            .await
            .map_err(|e| db.error(&what, &e))?;
        let columns = Arc::new(self.relation.columns.clone());
        self.stream = Some(Streaming {
            rows: Box::pin(rows),
            upto,
            relation_id: None,
            page: Rows::new(columns.clone(), true, PAGE_ROWS),
            columns,
            transaction: None,
            landed,
            read_any: false,
            bytes: 0,
            ended: false,
        });
        Ok(())
    }

    fn page(&mut self, chunk: inlet_engine::source::RawChunk, bytes: u64, cut: bool) -> Result<Page, Error> {
        self.pages += 1;
        let position = serde_json::to_value(&self.position)
            .map_err(|e| Error::Internal(format!("source `{}`: position: {e}", self.context.name)))?;
        Ok(Page { url: self.context.unit.clone(), number: self.pages, bytes, chunk, position, cut, derive: None })
    }

    /// The next page of the snapshot, `None` once it is read.
    async fn snapshot_page(&mut self) -> Result<Option<Page>, Error> {
        let Some(scanning) = self.snapshot.as_mut() else { return Ok(None) };
        let page = scanning.next_page(&self.context.db, &self.client, PAGE_ROWS, &mut |_| true).await?;
        let Some(page) = page else {
            self.snapshot = None;
            return Ok(None);
        };
        let keyed = !self.relation.primary_key.is_empty();
        if page.exhausted {
            // The scan gives `None` next, and the slot is read after it in this run.
            self.position.load = None;
            let _ = self.client.batch_execute("COMMIT").await;
        } else if let Some(load) = self.position.load.as_mut() {
            load.after.clone_from(&page.last_key);
            load.rows += page.rows;
        }
        let exhausted = page.exhausted;
        self.page(page.chunk, page.bytes, keyed || exhausted).map(Some)
    }

    /// The next page of changes, `None` once the slot is read up to where the run began.
    async fn stream_page(&mut self) -> Result<Option<Page>, Error> {
        let name = self.context.name.clone();
        let idle_advance = self.context.config.idle_advance_bytes;
        let table = self.relation.name.clone();
        let db = self.context.db.clone();
        let what = format!("slot `{}`", self.slot);
        let Some(stream) = self.stream.as_mut() else { return Ok(None) };
        if stream.ended {
            return Ok(None);
        }
        let filter = self.position.stream.as_ref().and_then(|s| s.snapshot.clone());
        loop {
            let next = stream.rows.next().await;
            let row = match next {
                Some(Ok(row)) => row,
                Some(Err(e)) => return Err(db.error(&what, &e)),
                None => {
                    stream.ended = true;
                    let start = self.position.stream.as_ref().map_or(0, |s| s.lsn);
                    if !stream.page.is_empty() || stream.landed > start {
                        let page = std::mem::replace(&mut stream.page, Rows::new(stream.columns.clone(), true, 0));
                        let bytes = std::mem::take(&mut stream.bytes);
                        let landed = stream.landed;
                        self.set_lsn(landed);
                        return self.page(page.finish()?, bytes, true).map(Some);
                    }
                    if !stream.read_any && stream.upto.saturating_sub(start) >= idle_advance {
                        // Nothing of the table below `upto`: the position moves on without rows.
                        let upto = stream.upto;
                        info!(source = %name, from = %lsn_text(start), to = %lsn_text(upto), "idle: moving the position to the WAL's end");
                        let page = Rows::new(stream.columns.clone(), true, 0);
                        self.set_lsn(upto);
                        return self.page(page.finish()?, 0, true).map(Some);
                    }
                    return Ok(None);
                }
            };
            let lsn: &str = row.try_get(0).map_err(|e| db.error(&what, &e))?;
            let lsn = parse_lsn(lsn).ok_or_else(|| db.fail(&what, format!("an LSN `{lsn}`")))?;
            let data: &[u8] = row.try_get(1).map_err(|e| db.error(&what, &e))?;
            stream.bytes += data.len() as u64;
            let message = parse(data).map_err(|m| db.fail(&what, format!("a pgoutput message: {m}")))?;
            match message {
                Message::Begin { final_lsn, commit_micros, xid } => {
                    let skip = final_lsn < stream.landed || filter.as_ref().is_some_and(|f| f.saw(xid, final_lsn));
                    // The first transaction to land is the oldest the source was behind by.
                    if !skip
                        && let Some(lag) = self.lag.as_mut()
                        && lag.seconds == 0.0
                    {
                        let age = chrono::Utc::now().timestamp_micros() - commit_micros;
                        lag.seconds = (age.max(0) as f64 / 1e6).max(f64::MIN_POSITIVE);
                    }
                    stream.transaction = Some(Transaction { commit_micros, xid, skip, touched: false });
                }
                Message::Commit { end_lsn, .. } => {
                    let landed = stream.transaction.take().is_some_and(|t| !t.skip && t.touched);
                    if landed {
                        stream.landed = end_lsn;
                        stream.read_any = true;
                        if stream.page.len() >= PAGE_ROWS {
                            let page =
                                std::mem::replace(&mut stream.page, Rows::new(stream.columns.clone(), true, PAGE_ROWS));
                            let bytes = std::mem::take(&mut stream.bytes);
                            self.set_lsn(end_lsn);
                            return self.page(page.finish()?, bytes, true).map(Some);
                        }
                    }
                }
                Message::Relation { id, schema, name: relation_name, columns } => {
                    if format!("{schema}.{relation_name}") != table {
                        continue;
                    }
                    stream.relation_id = Some(id);
                    let landed = self.position.stream.as_mut().map(|s| &mut s.columns);
                    let Some(landed) = landed else { continue };
                    let decoded =
                        evolve(&table, landed, &columns, &self.relation.columns).map_err(|m| db.refuse(&what, m))?;
                    if decoded == *stream.columns {
                        continue;
                    }
                    info!(source = %name, table = %table, columns = decoded.len(), "the table's columns in the log changed");
                    let columns = Arc::new(decoded);
                    stream.columns = columns.clone();
                    if stream.page.is_empty() {
                        stream.page = Rows::new(columns, true, PAGE_ROWS);
                        continue;
                    }
                    // A page has one schema: the rows so far go now (a cut only between
                    // transactions; a transaction can go on in the next page).
                    let page = std::mem::replace(&mut stream.page, Rows::new(columns, true, PAGE_ROWS));
                    let bytes = std::mem::take(&mut stream.bytes);
                    let cut = stream.transaction.is_none();
                    let landed = stream.landed;
                    self.set_lsn(landed);
                    return self.page(page.finish()?, bytes, cut).map(Some);
                }
                Message::Insert { relation, new } => {
                    if let Some(change) = change(stream, relation, lsn, "insert", None) {
                        stream.page.push_change(&change, &new)?;
                    }
                }
                Message::Update { relation, old, new } => {
                    let before = old.as_deref().map(|old| before_json(&stream.columns, old));
                    if let Some(change) = change(stream, relation, lsn, "update", before) {
                        // A new key: the old one is deleted first, so a merge by key keeps one row.
                        if let Some(old) = old.as_deref()
                            && key_changed(&stream.columns, &self.relation.primary_key, old, &new)
                        {
                            let delete = Change { op: "delete", before: None, ..change };
                            stream.page.push_change(&delete, old)?;
                        }
                        stream.page.push_change(&change, &new)?;
                    }
                }
                Message::Delete { relation, old } => {
                    if let Some(change) = change(stream, relation, lsn, "delete", None) {
                        stream.page.push_change(&change, &old)?;
                    }
                }
                Message::Truncate { relations } => {
                    if let Some(id) = stream.relation_id
                        && relations.contains(&id)
                        && let Some(change) = change(stream, id, lsn, "truncate", None)
                    {
                        stream.page.push_change(&change, &[])?;
                    }
                }
                Message::Other => {}
            }
            if stream.page.len() >= PAGE_ROWS && stream.transaction.is_some() {
                // A large transaction goes on in the next page; this one is not a cut.
                let page = std::mem::replace(&mut stream.page, Rows::new(stream.columns.clone(), true, PAGE_ROWS));
                let bytes = std::mem::take(&mut stream.bytes);
                let landed = stream.landed;
                self.set_lsn(landed);
                return self.page(page.finish()?, bytes, false).map(Some);
            }
        }
    }

    fn set_lsn(&mut self, lsn: u64) {
        if let Some(stream) = self.position.stream.as_mut() {
            stream.lsn = lsn;
            // Past the snapshot's WAL end, no transaction can have been in it.
            if stream.snapshot.as_ref().is_some_and(|f| lsn >= f.until_lsn) {
                stream.snapshot = None;
            }
        }
    }
}

/// The change columns of a change to `relation` in the transaction being read, `None` when
/// it is skipped or of another table.
fn change<'a>(
    stream: &mut Streaming,
    relation: u32,
    lsn: u64,
    op: &'a str,
    before: Option<String>,
) -> Option<Change<'a>> {
    let transaction = stream.transaction.as_mut()?;
    if transaction.skip || stream.relation_id != Some(relation) {
        return None;
    }
    transaction.touched = true;
    let Transaction { commit_micros, xid, .. } = *transaction;
    // The change's own LSN: it orders the changes of a key, within a transaction and
    // across them (a row is locked until the transaction that changed it ends).
    Some(Change { op, lsn, commit_micros, xid, before })
}

/// Whether an update's old tuple names another key than its new one.
fn key_changed(columns: &[Column], key: &[String], old: &[Value], new: &[Value]) -> bool {
    key.iter().any(|k| {
        columns.iter().position(|c| &c.name == k).is_some_and(|i| match (old.get(i), new.get(i)) {
            (Some(Value::Binary(a)), Some(Value::Binary(b))) => a != b,
            (Some(Value::Binary(_)), _) | (_, Some(Value::Binary(_))) => true,
            _ => false,
        })
    })
}

/// The old row of an update (its key, or all of it) as JSON.
fn before_json(columns: &[Column], old: &[Value]) -> String {
    let mut object = serde_json::Map::new();
    for (column, value) in columns.iter().zip(old) {
        if let Value::Binary(bytes) = value {
            let text = text_of(&column.ty, bytes).unwrap_or_default();
            object.insert(column.name.clone(), serde_json::Value::String(text));
        }
    }
    serde_json::Value::Object(object).to_string()
}

/// The columns a `Relation` message logs, to decode the changes after it. `landed` (the
/// columns the table has from the source) gains the columns added at the end; a landed
/// column the log no longer has, or has with another type, is an error naming the table.
/// Types come from the OID, or from the catalog (`catalog`) for enums, domains and arrays.
fn evolve(
    table: &str,
    landed: &mut Vec<(String, u32)>,
    logged: &[RelationColumn],
    catalog: &[Column],
) -> Result<Vec<Column>, String> {
    for (name, oid) in landed.iter() {
        match logged.iter().find(|c| c.name == name) {
            None => {
                return Err(format!(
                    "column `{name}` of `{table}` was dropped or renamed; bronze keeps it, so the source stops"
                ));
            }
            Some(now) if now.type_oid != *oid => {
                return Err(format!(
                    "column `{name}` of `{table}` changed type (oid {oid} to {}); bronze cannot follow, so the source stops",
                    now.type_oid
                ));
            }
            Some(_) => {}
        }
    }
    let mut columns = Vec::with_capacity(logged.len());
    for column in logged {
        let known = catalog.iter().find(|c| c.oid == column.type_oid);
        let ty = PgType::builtin(column.type_oid, "", column.typmod)
            .or_else(|| known.map(|c| c.ty.clone()))
            .ok_or_else(|| {
                format!(
                    "column `{}` of `{table}` is of a type (oid {}) inlet does not read",
                    column.name, column.type_oid
                )
            })?;
        if !landed.iter().any(|(name, _)| name == column.name) {
            landed.push((column.name.to_owned(), column.type_oid));
        }
        let type_name = known.map_or_else(|| format!("oid {}", column.type_oid), |c| c.type_name.clone());
        columns.push(Column { name: column.name.to_owned(), ty, oid: column.type_oid, type_name });
    }
    Ok(columns)
}

/// The deletes a restart owes, as SQL over the table (`before`: the replaced change log,
/// `now`: the new snapshot): a key whose latest change in the log (after its latest
/// truncate) is not a delete, and that the snapshot lacks. Their `_lsn` is the snapshot's.
fn reconcile(relation: &Relation, restart: Resnapshot) -> Derive {
    let Resnapshot { before_version, lsn } = restart;
    let keys =
        relation.primary_key.iter().map(|k| format!("\"{}\"", k.replace('"', "\"\""))).collect::<Vec<_>>().join(", ");
    let micros = chrono::Utc::now().timestamp_micros();
    let sql = format!(
        "SELECT {keys}, 'delete' AS \"_op\", CAST({lsn} AS BIGINT) AS \"_lsn\", to_timestamp_micros({micros}) AS \"_commit_ts\" FROM (\
           SELECT {keys} FROM (\
             SELECT {keys}, \"_op\", \"_lsn\", ROW_NUMBER() OVER (PARTITION BY {keys} ORDER BY \"_lsn\" DESC) AS __inlet_rn \
             FROM before WHERE \"_op\" <> 'truncate'\
           ) WHERE __inlet_rn = 1 AND \"_op\" <> 'delete' \
             AND \"_lsn\" > (SELECT COALESCE(MAX(\"_lsn\"), -1) FROM before WHERE \"_op\" = 'truncate') \
           EXCEPT SELECT {keys} FROM now WHERE \"_op\" = 'snapshot'\
         )"
    );
    Derive { sql, before_version }
}

/// The snapshot's rows, `_lsn` `floor` (0 at the first run): before every change the slot
/// gives. (A transaction the snapshot did not see can have changes logged before the
/// slot's consistent point.)
fn snapshot_scan(context: &Context, relation: &Arc<Relation>, after: Option<Vec<String>>, floor: u64) -> Scanning {
    let scan = Scan {
        relation: relation.clone(),
        key: relation.primary_key.clone(),
        extra: Vec::new(),
        filter: None,
        rows_per_chunk: context.config.rows_per_chunk,
        snapshot: Some((floor, chrono::Utc::now().timestamp_micros())),
    };
    Scanning::new(scan, after)
}

#[async_trait::async_trait]
impl Extraction for Capture {
    async fn next_page(&mut self) -> Result<Option<Page>, SourceError> {
        if self.done {
            return Ok(None);
        }
        if self.snapshot.is_some()
            && let Some(page) = self.snapshot_page().await?
        {
            return Ok(Some(page));
        }
        if let Some(derive) = self.reconcile.take() {
            // The deletes the restart owes: a page of its own, with no rows of its own.
            self.position.resnapshot = None;
            let chunk = Rows::new(Arc::new(self.relation.columns.clone()), true, 0).finish()?;
            let mut page = self.page(chunk, 0, true)?;
            page.derive = Some(derive);
            return Ok(Some(page));
        }
        if self.stream.is_none() {
            self.start_stream().await?;
        }
        let page = self.stream_page().await?;
        if page.is_none() {
            self.done = true;
        }
        Ok(page)
    }

    fn lag(&self) -> Option<Lag> {
        self.lag
    }
}
