//! SCD type 2: every version of a key is a row valid from `_valid_from` until `_valid_to`
//! (NULL while current), with `_is_current` and `_row_hash` (of the tracked columns).
//!
//! A run works out first which keys it touches, with a join of the result against the
//! current rows: a result row whose hash equals its key's current row, and which is not
//! older than it, changes nothing and is dropped there. For the touched keys only, the
//! history is rebuilt ([`fold`]): their existing rows and the new rows become events on
//! the valid-time line, folded in time order, so out-of-order arrivals land in the right
//! place, several changes in one batch each get a row, deletes close the current row and a
//! key that comes back opens a new one. Only files holding keys whose history changed are
//! rewritten; with deletion vectors, those keys' rows are marked deleted in them instead
//! ([`super::mark`]), and only the keys' new histories are written.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray, RecordBatch, StringArray, StringBuilder, TimestampMicrosecondArray};
use arrow::compute::{cast, interleave};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::row::{RowConverter, SortField};
use deltalake::datafusion::datasource::MemTable;
use deltalake::datafusion::prelude::{DataFrame, SessionContext};
use sha2::{Digest, Sha256};

use crate::config::Scd2Deletes;
use crate::error::{EngineError, Result};
use crate::schema::timestamp_type;
use crate::table::{CommitKind, Key};
use crate::transform::{
    DELETE_COLUMN, FILE_COLUMN, Planned, RowCounts, Writer, Written, conform_batch, quote, removes_for,
};

pub const VALID_FROM: &str = "_valid_from";
pub const VALID_TO: &str = "_valid_to";
pub const IS_CURRENT: &str = "_is_current";
pub const ROW_HASH: &str = "_row_hash";
const HISTORY_COLUMNS: [&str; 4] = [VALID_FROM, VALID_TO, IS_CURRENT, ROW_HASH];

/// One version of a key on the valid-time line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    pub from: i64,
    pub to: Option<i64>,
    pub hash: String,
    /// Where its column values come from (opaque to the fold).
    pub payload: (usize, usize),
}

/// A new event for a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Upsert { at: i64, hash: String, payload: (usize, usize) },
    Delete { at: i64 },
}

/// The history of one key after `events`, given its `existing` versions (in any order).
pub fn fold(existing: &[Version], events: &[Event]) -> Vec<Version> {
    // (time, rank, event): at one instant the close of an existing version comes first,
    // then what was there, then what is new, then a new delete (which cancels a version
    // opened at that very instant).
    let mut line: Vec<(i64, u8, Event)> = Vec::with_capacity(existing.len() * 2 + events.len());
    for version in existing {
        line.push((
            version.from,
            1,
            Event::Upsert { at: version.from, hash: version.hash.clone(), payload: version.payload },
        ));
        if let Some(to) = version.to
            && !existing.iter().any(|v| v.from == to)
        {
            line.push((to, 0, Event::Delete { at: to }));
        }
    }
    for event in events {
        match event {
            Event::Upsert { at, .. } => line.push((*at, 2, event.clone())),
            Event::Delete { at } => line.push((*at, 3, event.clone())),
        }
    }
    line.sort_by_key(|(at, rank, _)| (*at, *rank));
    let mut out = Vec::new();
    let mut open: Option<Version> = None;
    for (at, _, event) in line {
        match event {
            Event::Delete { .. } => {
                if let Some(mut version) = open.take()
                    && version.from < at
                {
                    version.to = Some(at);
                    out.push(version);
                }
            }
            Event::Upsert { hash, payload, .. } => match open.as_mut() {
                Some(version) if version.hash == hash => {}
                // A new value at the same instant corrects the version opened there.
                Some(version) if version.from == at => {
                    version.hash = hash;
                    version.payload = payload;
                }
                Some(_) => {
                    if let Some(mut version) = open.take() {
                        version.to = Some(at);
                        out.push(version);
                    }
                    open = Some(Version { from: at, to: None, hash, payload });
                }
                None => open = Some(Version { from: at, to: None, hash, payload }),
            },
        }
    }
    out.extend(open);
    out
}

fn same_history(a: &[Version], b: &[Version]) -> bool {
    let key = |v: &Version| (v.from, v.to, v.hash.clone());
    let mut a: Vec<_> = a.iter().map(key).collect();
    let mut b: Vec<_> = b.iter().map(key).collect();
    a.sort();
    b.sort();
    a == b
}

/// `_row_hash`: SHA-256 over `name=length:value` of the tracked columns that are not
/// NULL, by column name, values as Arrow casts them to text; the first 16 bytes, in hex. A
/// column added later and still NULL leaves hashes unchanged.
fn row_hashes(batch: &RecordBatch, tracked: &[String]) -> Result<StringArray> {
    use std::io::Write as _;
    let mut names: Vec<&String> = tracked.iter().filter(|name| batch.column_by_name(name).is_some()).collect();
    names.sort();
    let texts = names.iter().map(|name| strings(column(batch, name)?, name)).collect::<Result<Vec<StringArray>>>()?;
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = StringBuilder::with_capacity(batch.num_rows(), batch.num_rows() * 32);
    let mut buffer: Vec<u8> = Vec::with_capacity(256);
    let mut hex = [0u8; 32];
    for row in 0..batch.num_rows() {
        buffer.clear();
        for (name, text) in names.iter().zip(&texts) {
            if text.is_null(row) {
                continue;
            }
            let value = text.value(row);
            let _ = write!(buffer, "{name}={}:", value.len());
            buffer.extend_from_slice(value.as_bytes());
            buffer.push(0x1f);
        }
        let digest = Sha256::digest(&buffer);
        for (i, byte) in digest[..16].iter().enumerate() {
            hex[2 * i] = HEX[usize::from(byte >> 4)];
            hex[2 * i + 1] = HEX[usize::from(byte & 0x0f)];
        }
        out.append_value(std::str::from_utf8(&hex).unwrap_or_default());
    }
    Ok(out.finish())
}

fn micros(column: &ArrayRef, what: &str) -> Result<TimestampMicrosecondArray> {
    let column = cast(column, &timestamp_type()).map_err(|e| EngineError::arrow(format!("reading {what}"), e))?;
    column
        .as_any()
        .downcast_ref::<TimestampMicrosecondArray>()
        .cloned()
        .ok_or_else(|| EngineError::Internal(format!("{what} is not a timestamp")))
}

fn strings(column: &ArrayRef, what: &str) -> Result<StringArray> {
    let column = cast(column, &DataType::Utf8).map_err(|e| EngineError::arrow(format!("reading {what}"), e))?;
    column
        .as_any()
        .downcast_ref::<StringArray>()
        .cloned()
        .ok_or_else(|| EngineError::Internal(format!("{what} is not text")))
}

fn column<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a ArrayRef> {
    batch.column_by_name(name).ok_or_else(|| EngineError::Internal(format!("no column `{name}`")))
}

/// Per key: its existing versions and new events, and one row holding its key values.
#[derive(Default)]
struct KeyState {
    existing: Vec<Version>,
    events: Vec<Event>,
    /// (batch, row) of a row with this key, in `sources`.
    sample: Option<(usize, usize)>,
    /// Result rows of this key.
    input_rows: u64,
}

pub(crate) async fn write(
    writer: &Writer<'_>,
    context: &SessionContext,
    frame: DataFrame,
    now_micros: i64,
) -> Result<Written> {
    let config = writer.config;
    for name in HISTORY_COLUMNS {
        if frame.schema().as_arrow().field_with_name(name).is_ok() {
            return Err(writer.transform_error(format!("the query result has a column `{name}`, which scd2 writes")));
        }
    }
    let (table_schema, changed_schema) = writer.plan_schema(frame.schema().as_arrow(), false)?;
    let data_fields: Vec<_> =
        table_schema.fields().iter().filter(|f| !HISTORY_COLUMNS.contains(&f.name().as_str())).cloned().collect();
    let data_schema: SchemaRef = Arc::new(Schema::new(data_fields.clone()));
    let mut fields = data_fields;
    fields.push(Arc::new(Field::new(VALID_FROM, timestamp_type(), true)));
    fields.push(Arc::new(Field::new(VALID_TO, timestamp_type(), true)));
    fields.push(Arc::new(Field::new(IS_CURRENT, DataType::Boolean, true)));
    fields.push(Arc::new(Field::new(ROW_HASH, DataType::Utf8, true)));
    let schema: SchemaRef = Arc::new(Schema::new(fields));
    let keys = &config.keys;
    let tracked: Vec<String> = match &config.track_columns {
        Some(columns) => columns.clone(),
        None => data_schema
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .filter(|n| !keys.contains(n) && config.sequence_by.as_ref() != Some(n))
            .collect(),
    };
    for column in &tracked {
        if data_schema.field_with_name(column).is_err() {
            return Err(writer.transform_error(format!("track column `{column}` is not in the query result")));
        }
    }

    // The result with its delete flag, sequence and hash.
    let started = std::time::Instant::now();
    let result = writer.keyed_source_unique(context, frame, &data_schema).await?;
    tracing::debug!(table = %writer.table, elapsed_ms = started.elapsed().as_millis() as u64, "scd2 source ready");
    let mut input = Vec::new();
    // A snapshot is as of its latest valid time: keys missing from it are closed then.
    let mut latest: Option<i64> = None;
    for batch in &result {
        let delete = column(batch, DELETE_COLUMN)?.clone();
        let at = match &config.sequence_by {
            Some(sequence) => micros(column(batch, sequence)?, &format!("`{sequence}`"))?,
            None => TimestampMicrosecondArray::from(vec![now_micros; batch.num_rows()]).with_timezone("UTC"),
        };
        if at.null_count() > 0 {
            return Err(writer.transform_error(format!(
                "{} result rows have a NULL `{}`; valid time must be known",
                at.null_count(),
                config.sequence_by.as_deref().unwrap_or_default()
            )));
        }
        latest = at.iter().flatten().fold(latest, |latest, t| latest.max(Some(t)));
        let hash = row_hashes(batch, &tracked)?;
        let data = conform_batch(batch, &data_schema, writer.table)?;
        input.push((data, at, delete, hash));
    }

    tracing::debug!(table = %writer.table, elapsed_ms = started.elapsed().as_millis() as u64, "scd2 hashed");
    let key_fields: Vec<SortField> = keys
        .iter()
        .map(|k| data_schema.field_with_name(k).map(|f| SortField::new(f.data_type().clone())))
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| EngineError::arrow("key columns", e))?;
    let converter = RowConverter::new(key_fields).map_err(|e| EngineError::arrow("key columns", e))?;
    let key_columns =
        |batch: &RecordBatch| -> Result<Vec<ArrayRef>> { keys.iter().map(|k| column(batch, k).cloned()).collect() };

    // Sources of column values: history batches first, then the result.
    let mut sources: Vec<RecordBatch> = Vec::new();
    let mut states: HashMap<Vec<u8>, KeyState> = HashMap::new();
    let mut history_files: HashMap<Vec<u8>, BTreeSet<String>> = HashMap::new();
    let mut unchanged = 0u64;

    // The result as events: its columns plus valid time, delete flag and hash.
    let mut event_fields: Vec<_> = data_schema.fields().iter().cloned().collect();
    event_fields.push(Arc::new(Field::new("__inlet_at", timestamp_type(), true)));
    event_fields.push(Arc::new(Field::new(DELETE_COLUMN, DataType::Boolean, true)));
    event_fields.push(Arc::new(Field::new("__inlet_hash", DataType::Utf8, true)));
    let event_schema: SchemaRef = Arc::new(Schema::new(event_fields));
    let events = input
        .iter()
        .map(|(data, at, delete, hash)| {
            let mut columns = data.columns().to_vec();
            columns.push(Arc::new(at.clone()));
            columns.push(delete.clone());
            columns.push(Arc::new(hash.clone()));
            RecordBatch::try_new(event_schema.clone(), columns)
                .map_err(|e| EngineError::arrow("assembling the scd2 input", e))
        })
        .collect::<Result<Vec<RecordBatch>>>()?;

    let existing_table = writer.target.exists();
    let touched_input: Vec<RecordBatch>;
    if existing_table {
        let table = MemTable::try_new(event_schema.clone(), vec![events]).map_err(|e| writer.sql_error(e))?;
        context.register_table("__inlet_in", Arc::new(table)).map_err(|e| writer.sql_error(e))?;
        let target = writer.target.scan(None, Some(FILE_COLUMN)).await?;
        context.register_table("__inlet_tgt", target).map_err(|e| writer.sql_error(e))?;
        let on = |a: &str, b: &str| {
            keys.iter().map(|k| format!("({a}.{k} = {b}.{k})", k = quote(k))).collect::<Vec<_>>().join(" AND ")
        };
        let key_list =
            |alias: &str| keys.iter().map(|k| format!("{alias}.{}", quote(k))).collect::<Vec<_>>().join(", ");
        let ignore_deletes =
            if config.deletes == Scd2Deletes::Ignore { format!(" AND NOT i.{DELETE_COLUMN}") } else { String::new() };
        let current = format!(
            "SELECT {}, {VALID_FROM}, {ROW_HASH} FROM __inlet_tgt WHERE {IS_CURRENT}",
            keys.iter().map(|k| quote(k)).collect::<Vec<_>>().join(", ")
        );
        // A key is touched when any of its rows is not its current version again (a later
        // row equal to the current one may follow a change in the same batch); all rows of a
        // touched key go to the fold.
        let changing = format!(
            "SELECT DISTINCT {} FROM __inlet_in i LEFT JOIN ({current}) c ON {} WHERE NOT (c.{ROW_HASH} IS NOT NULL AND c.{ROW_HASH} = i.__inlet_hash AND i.__inlet_at >= c.{VALID_FROM} AND NOT i.{DELETE_COLUMN}){ignore_deletes}",
            key_list("i"),
            on("c", "i")
        );
        let touched_sql = format!(
            "SELECT i.* FROM __inlet_in i WHERE EXISTS (SELECT 1 FROM ({changing}) k WHERE {}){ignore_deletes}",
            on("k", "i")
        );
        let touched_frame = context.sql(&touched_sql).await.map_err(|e| writer.sql_error(e))?;
        let touched_frame = touched_frame.cache().await.map_err(|e| writer.sql_error(e))?;
        context
            .register_table("__inlet_touched", touched_frame.clone().into_view())
            .map_err(|e| writer.sql_error(e))?;
        touched_input = touched_frame.collect().await.map_err(|e| writer.sql_error(e))?;
        tracing::debug!(table = %writer.table, elapsed_ms = started.elapsed().as_millis() as u64, "scd2 touched rows");
        let touched_rows: usize = touched_input.iter().map(RecordBatch::num_rows).sum();
        let input_rows: usize = input.iter().map(|(d, ..)| d.num_rows()).sum();
        unchanged += (input_rows - touched_rows.min(input_rows)) as u64;

        let mut key_sets = vec![format!("SELECT DISTINCT {} FROM __inlet_touched t", key_list("t"))];
        if config.source_is_snapshot && config.deletes == Scd2Deletes::Close {
            key_sets.push(format!(
                "SELECT {} FROM ({current}) c WHERE NOT EXISTS (SELECT 1 FROM __inlet_in i WHERE {})",
                key_list("c"),
                on("i", "c")
            ));
            for batch in writer.query(context, &key_sets[1]).await? {
                let rows =
                    converter.convert_columns(&key_columns(&batch)?).map_err(|e| EngineError::arrow("keys", e))?;
                for row in 0..batch.num_rows() {
                    let state = states.entry(rows.row(row).as_ref().to_vec()).or_default();
                    state.events.push(Event::Delete { at: latest.unwrap_or(now_micros) });
                }
            }
        }
        let touched_keys = key_sets.join(" UNION ");
        let history_sql = format!(
            "SELECT t.* FROM __inlet_tgt t WHERE EXISTS (SELECT 1 FROM ({touched_keys}) k WHERE {})",
            on("k", "t")
        );
        for batch in writer.query(context, &history_sql).await? {
            let from = micros(column(&batch, VALID_FROM)?, VALID_FROM)?;
            let to = micros(column(&batch, VALID_TO)?, VALID_TO)?;
            let hash = strings(column(&batch, ROW_HASH)?, ROW_HASH)?;
            let file = strings(column(&batch, FILE_COLUMN)?, FILE_COLUMN)?;
            let rows = converter.convert_columns(&key_columns(&batch)?).map_err(|e| EngineError::arrow("keys", e))?;
            let index = sources.len();
            for row in 0..batch.num_rows() {
                let key = rows.row(row).as_ref().to_vec();
                history_files.entry(key.clone()).or_default().insert(file.value(row).to_owned());
                let state = states.entry(key).or_default();
                state.existing.push(Version {
                    from: from.value(row),
                    to: to.is_valid(row).then(|| to.value(row)),
                    hash: hash.value(row).to_owned(),
                    payload: (index, row),
                });
                state.sample.get_or_insert((index, row));
            }
            sources.push(conform_batch(&batch, &data_schema, writer.table)?);
        }
        // The whole result is done with: only the touched rows go on. Dropped here, before
        // the fold and the rewrite, so a day's snapshot is not held beside the history.
        for name in ["__inlet_in", "__inlet_touched"] {
            context.deregister_table(name).map_err(|e| writer.sql_error(e))?;
        }
    } else {
        touched_input = events;
    }
    context.deregister_table("__inlet_result").map_err(|e| writer.sql_error(e))?;
    drop(input);
    drop(result);

    for batch in &touched_input {
        let at = micros(column(batch, "__inlet_at")?, "valid time")?;
        let delete = cast(column(batch, DELETE_COLUMN)?, &DataType::Boolean)
            .map_err(|e| EngineError::arrow("delete flags", e))?;
        let delete = delete
            .as_any()
            .downcast_ref::<BooleanArray>()
            .cloned()
            .ok_or_else(|| EngineError::Internal("delete flags are not boolean".into()))?;
        let hash = strings(column(batch, "__inlet_hash")?, "row hash")?;
        let rows = converter.convert_columns(&key_columns(batch)?).map_err(|e| EngineError::arrow("keys", e))?;
        let index = sources.len();
        for row in 0..batch.num_rows() {
            let state = states.entry(rows.row(row).as_ref().to_vec()).or_default();
            state.input_rows += 1;
            let deleting = delete.is_valid(row) && delete.value(row);
            if deleting {
                if config.deletes == Scd2Deletes::Close {
                    state.events.push(Event::Delete { at: at.value(row) });
                }
            } else {
                state.events.push(Event::Upsert {
                    at: at.value(row),
                    hash: hash.value(row).to_owned(),
                    payload: (index, row),
                });
            }
            state.sample.get_or_insert((index, row));
        }
        sources.push(conform_batch(batch, &data_schema, writer.table)?);
    }

    tracing::debug!(table = %writer.table, elapsed_ms = started.elapsed().as_millis() as u64, "scd2 history read");
    // Fold every touched key; keep those whose history changed.
    let mut rows = RowCounts { unchanged, ..RowCounts::default() };
    let mut rebuilt: Vec<Version> = Vec::new();
    let mut changed_samples: Vec<(usize, usize)> = Vec::new();
    let mut rewrite_files: BTreeSet<String> = BTreeSet::new();
    // With deletion vectors, per file, the changed keys whose rows in it are marked deleted.
    let marks_rows = existing_table && writer.marks_rows();
    let mut marked_keys: HashMap<&str, Vec<&[u8]>> = HashMap::new();
    // With change data recorded, the history rows this run changes, as `cdc` rows.
    let record_changes = existing_table && writer.target.change_data_feed();
    let mut changes: Vec<(Version, &'static str)> = Vec::new();
    for (key, state) in &states {
        let history = fold(&state.existing, &state.events);
        if same_history(&history, &state.existing) {
            rows.unchanged += state.input_rows;
            continue;
        }
        if record_changes {
            changes.extend(history_changes(&state.existing, &history));
        }
        let had_current = state.existing.iter().any(|v| v.to.is_none());
        let has_current = history.iter().any(|v| v.to.is_none());
        let current_before = state.existing.iter().find(|v| v.to.is_none()).map(|v| (v.from, v.hash.clone()));
        let current_after = history.iter().find(|v| v.to.is_none()).map(|v| (v.from, v.hash.clone()));
        rows.inserted +=
            history.iter().filter(|v| !state.existing.iter().any(|e| e.from == v.from && e.hash == v.hash)).count()
                as u64;
        if had_current && !has_current {
            rows.deleted += 1;
        } else if had_current && current_before != current_after {
            rows.updated += 1;
        }
        if let Some(files) = history_files.get(key) {
            rewrite_files.extend(files.iter().cloned());
            if marks_rows {
                for file in files {
                    marked_keys.entry(file.as_str()).or_default().push(key.as_slice());
                }
            }
        }
        if let Some(sample) = state.sample {
            changed_samples.push(sample);
        }
        rebuilt.extend(history);
    }
    if rebuilt.is_empty() && !changed_schema {
        return Ok(Written { rows, commit: None });
    }

    tracing::debug!(table = %writer.table, elapsed_ms = started.elapsed().as_millis() as u64, "scd2 folded");
    let mut adds = Vec::new();
    let mut marked_removes = None;
    if !rewrite_files.is_empty() && marks_rows {
        // The changed keys' rows marked deleted where they are; their files stay.
        let key_types = keys
            .iter()
            .map(|k| data_schema.field_with_name(k).map(|f| (k.clone(), f.data_type().clone())))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| EngineError::arrow("key columns", e))?;
        // The keys are in `converter`'s row format: one sort field per key, as here.
        let scan = writer.target.key_scan_in_row_format(key_types)?;
        let mut wanted = HashMap::with_capacity(marked_keys.len());
        for (file, keys) in marked_keys {
            let mut set = scan.new_set();
            for key in keys {
                set.insert(Key::Row(key))?;
            }
            wanted.insert(file.to_owned(), set);
        }
        let files = writer.target.active_files().await?;
        let (marked, removes) = writer.mark_keys(&scan, wanted, &files).await?;
        adds.extend(marked);
        marked_removes = Some(removes);
    } else if !rewrite_files.is_empty() {
        // Rows of rewritten files whose key did not change stay as they were: only those
        // files are read again, minus the changed keys, and written by parallel writers.
        let changed_keys =
            gather(&sources, &changed_samples, &keys.iter().map(String::as_str).collect::<Vec<_>>(), &data_schema)?;
        let table =
            MemTable::try_new(changed_keys.schema(), vec![vec![changed_keys]]).map_err(|e| writer.sql_error(e))?;
        context.register_table("__inlet_changed", Arc::new(table)).map_err(|e| writer.sql_error(e))?;
        let rewrite = writer.target.scan(Some(rewrite_files.iter().cloned().collect()), None).await?;
        context.register_table("__inlet_rewrite", rewrite).map_err(|e| writer.sql_error(e))?;
        let on = keys.iter().map(|k| format!("(c.{k} = t.{k})", k = quote(k))).collect::<Vec<_>>().join(" AND ");
        // `t.*`: columns added by this run are not in the old files; writing fills them with NULL.
        let kept = format!("SELECT t.* FROM __inlet_changed c RIGHT ANTI JOIN __inlet_rewrite t ON {on}");
        adds.extend(writer.write_sql(context, &kept, &schema).await?.1);
    }
    let mut file_writer = writer.target.writer_factory(&[]).writer(schema.clone());
    tracing::debug!(table = %writer.table, elapsed_ms = started.elapsed().as_millis() as u64, "scd2 kept rows written");
    for chunk in rebuilt.chunks(65_536) {
        let chunk: Vec<&Version> = chunk.iter().collect();
        file_writer.write(&history_rows(&sources, &chunk, &data_schema, &schema, None)?).await?;
    }
    adds.extend(file_writer.close().await?);
    let mut cdc = Vec::new();
    if !changes.is_empty() {
        let change_schema = crate::transform::change_schema(&schema);
        let mut change_writer = writer.target.change_writer_factory(&[]).writer(change_schema.clone());
        for chunk in changes.chunks(65_536) {
            let versions: Vec<&Version> = chunk.iter().map(|(v, _)| v).collect();
            let kinds: Vec<&str> = chunk.iter().map(|(_, kind)| *kind).collect();
            let batch = history_rows(&sources, &versions, &data_schema, &change_schema, Some(&kinds))?;
            change_writer.write(&batch).await?;
        }
        cdc = crate::table::change_files(change_writer.close().await?);
    }
    tracing::debug!(table = %writer.table, elapsed_ms = started.elapsed().as_millis() as u64, "scd2 history written");
    let removes = match marked_removes {
        Some(removes) => removes,
        None => {
            let files = writer.target.active_files().await?;
            removes_for(writer.target, &files, &rewrite_files.into_iter().collect::<Vec<_>>())?
        }
    };
    let predicate =
        keys.iter().map(|k| format!("(target.{k} = source.{k})", k = quote(k))).collect::<Vec<_>>().join(" AND ");
    let schema_change = (!existing_table || changed_schema).then_some(schema);
    Ok(Written {
        rows,
        commit: Some(Planned { adds, removes, cdc, schema: schema_change, kind: CommitKind::Merge { predicate } }),
    })
}

/// History rows in `schema`: the data columns from `sources`, then `_valid_from`, `_valid_to`,
/// `_is_current`, `_row_hash` and, for change data, `_change_type`.
fn history_rows(
    sources: &[RecordBatch],
    versions: &[&Version],
    data_schema: &SchemaRef,
    schema: &SchemaRef,
    change_types: Option<&[&str]>,
) -> Result<RecordBatch> {
    let payloads: Vec<(usize, usize)> = versions.iter().map(|v| v.payload).collect();
    let names: Vec<&str> = data_schema.fields().iter().map(|f| f.name().as_str()).collect();
    let data = gather(sources, &payloads, &names, data_schema)?;
    let mut columns = data.columns().to_vec();
    columns.push(Arc::new(
        TimestampMicrosecondArray::from(versions.iter().map(|v| Some(v.from)).collect::<Vec<_>>()).with_timezone("UTC"),
    ));
    columns.push(Arc::new(
        TimestampMicrosecondArray::from(versions.iter().map(|v| v.to).collect::<Vec<_>>()).with_timezone("UTC"),
    ));
    columns.push(Arc::new(BooleanArray::from(versions.iter().map(|v| Some(v.to.is_none())).collect::<Vec<_>>())));
    columns.push(Arc::new(StringArray::from(versions.iter().map(|v| Some(v.hash.as_str())).collect::<Vec<_>>())));
    if let Some(kinds) = change_types {
        columns.push(Arc::new(StringArray::from(kinds.to_vec())));
    }
    RecordBatch::try_new(schema.clone(), columns).map_err(|e| EngineError::arrow("assembling history rows", e))
}

/// The change data of one key's history, rows identified by `_valid_from`: a row whose
/// validity or values changed is an update (pre- and post-image), one gone a delete, one
/// new an insert; rows rewritten as they were are no change.
fn history_changes(before: &[Version], after: &[Version]) -> Vec<(Version, &'static str)> {
    let same = |a: &Version, b: &Version| a.from == b.from && a.to == b.to && a.hash == b.hash;
    let mut changes = Vec::new();
    for old in before.iter().filter(|old| !after.iter().any(|new| same(old, new))) {
        match after.iter().find(|new| new.from == old.from) {
            Some(new) => {
                changes.push((old.clone(), "update_preimage"));
                changes.push((new.clone(), "update_postimage"));
            }
            None => changes.push((old.clone(), "delete")),
        }
    }
    for new in after.iter().filter(|new| !before.iter().any(|old| old.from == new.from)) {
        changes.push((new.clone(), "insert"));
    }
    changes
}

/// Rows `(batch, row)` of `sources`, columns `names`, in `schema`'s types.
fn gather(sources: &[RecordBatch], rows: &[(usize, usize)], names: &[&str], schema: &SchemaRef) -> Result<RecordBatch> {
    let mut fields = Vec::new();
    let mut columns = Vec::new();
    for name in names {
        let field = schema.field_with_name(name).map_err(|e| EngineError::arrow("gathering rows", e))?;
        let arrays: Vec<&dyn Array> = sources
            .iter()
            .map(|b| b.column_by_name(name).map(|c| c.as_ref()))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| EngineError::Internal(format!("a source batch lacks `{name}`")))?;
        let column = interleave(&arrays, rows).map_err(|e| EngineError::arrow("gathering rows", e))?;
        fields.push(field.clone());
        columns.push(column);
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).map_err(|e| EngineError::arrow("gathering rows", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(from: i64, to: Option<i64>, hash: &str) -> Version {
        Version { from, to, hash: hash.into(), payload: (0, 0) }
    }
    fn up(at: i64, hash: &str) -> Event {
        Event::Upsert { at, hash: hash.into(), payload: (1, 0) }
    }
    fn shape(history: &[Version]) -> Vec<(i64, Option<i64>, String)> {
        let mut s: Vec<_> = history.iter().map(|v| (v.from, v.to, v.hash.clone())).collect();
        s.sort();
        s
    }
    fn expect(history: Vec<Version>, want: &[(i64, Option<i64>, &str)]) {
        let want: Vec<_> = want.iter().map(|(f, t, h)| (*f, *t, h.to_string())).collect();
        assert_eq!(shape(&history), want);
        assert!(history.iter().filter(|v| v.to.is_none()).count() <= 1, "one current row at most");
    }

    #[test]
    fn first_load_change_and_no_change() {
        expect(fold(&[], &[up(10, "a")]), &[(10, None, "a")]);
        expect(fold(&[v(10, None, "a")], &[up(20, "b")]), &[(10, Some(20), "a"), (20, None, "b")]);
        let same = fold(&[v(10, None, "a")], &[up(20, "a")]);
        assert!(same_history(&same, &[v(10, None, "a")]));
    }

    #[test]
    fn rerun_of_the_same_input_changes_nothing() {
        let history = fold(&[], &[up(10, "a"), up(20, "b")]);
        let again = fold(&history, &[up(10, "a"), up(20, "b")]);
        assert!(same_history(&again, &history));
    }

    #[test]
    fn several_changes_in_one_batch_in_time_order() {
        expect(
            fold(&[v(10, None, "a")], &[up(30, "c"), up(20, "b")]),
            &[(10, Some(20), "a"), (20, Some(30), "b"), (30, None, "c")],
        );
    }

    #[test]
    fn out_of_order_arrival_lands_in_history() {
        let existing = [v(10, Some(30), "a"), v(30, None, "c")];
        expect(fold(&existing, &[up(20, "b")]), &[(10, Some(20), "a"), (20, Some(30), "b"), (30, None, "c")]);
        // Late and equal to the version before it: nothing changes.
        assert!(same_history(&fold(&existing, &[up(20, "a")]), &existing));
    }

    #[test]
    fn delete_and_revival() {
        let deleted = fold(&[v(10, None, "a")], &[Event::Delete { at: 20 }]);
        expect(deleted.clone(), &[(10, Some(20), "a")]);
        expect(fold(&deleted, &[up(30, "a")]), &[(10, Some(20), "a"), (30, None, "a")]);
        // Deleting what is already deleted changes nothing.
        assert!(same_history(&fold(&deleted, &[Event::Delete { at: 25 }]), &deleted));
    }

    #[test]
    fn a_change_back_in_one_batch_ends_on_the_last_value() {
        expect(
            fold(&[v(10, None, "a")], &[up(30, "b"), up(40, "a")]),
            &[(10, Some(30), "a"), (30, Some(40), "b"), (40, None, "a")],
        );
        expect(
            fold(&[v(10, None, "a")], &[Event::Delete { at: 30 }, up(40, "a")]),
            &[(10, Some(30), "a"), (40, None, "a")],
        );
    }

    #[test]
    fn a_delete_at_the_instant_a_version_opened_cancels_it() {
        expect(fold(&[v(10, Some(20), "a"), v(20, None, "b")], &[Event::Delete { at: 20 }]), &[(10, Some(20), "a")]);
        expect(fold(&[], &[up(10, "a"), Event::Delete { at: 10 }]), &[]);
    }

    #[test]
    fn correction_at_the_same_instant_replaces() {
        expect(fold(&[v(10, None, "a")], &[up(10, "b")]), &[(10, None, "b")]);
    }

    #[test]
    fn hashes_ignore_null_columns_and_order() {
        let schema =
            Arc::new(Schema::new(vec![Field::new("a", DataType::Utf8, true), Field::new("b", DataType::Int64, true)]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec![Some("x"), Some("x"), None, Some("")])),
                Arc::new(arrow::array::Int64Array::from(vec![None, Some(1), None, None])),
            ],
        )
        .unwrap();
        let one = row_hashes(&batch, &["a".into(), "b".into()]).unwrap();
        let only_a = row_hashes(&batch, &["a".into()]).unwrap();
        assert_eq!(one.value(0), only_a.value(0), "a NULL column does not count");
        assert_ne!(one.value(0), one.value(1));
        assert_ne!(one.value(2), one.value(3), "NULL and empty differ");
        let reordered = row_hashes(&batch, &["b".into(), "a".into()]).unwrap();
        assert_eq!(one.value(1), reordered.value(1));
    }

    #[test]
    fn history_changes_are_updates_deletes_and_inserts_by_valid_from() {
        let kinds = |before: &[Version], after: &[Version]| {
            let mut changes: Vec<(i64, Option<i64>, &str)> =
                history_changes(before, after).into_iter().map(|(v, kind)| (v.from, v.to, kind)).collect();
            changes.sort();
            changes
        };
        // A change closes the current row (update) and opens one (insert).
        let before = [v(1, None, "a")];
        let after = [v(1, Some(5), "a"), v(5, None, "b")];
        assert_eq!(
            kinds(&before, &after),
            [(1, None, "update_preimage"), (1, Some(5), "update_postimage"), (5, None, "insert")]
        );
        // Rows rewritten as they were are no change.
        assert!(kinds(&after, &after).is_empty());
        // A late row that cancels a version: that version is deleted, its predecessor stretched.
        let before = [v(1, Some(5), "a"), v(5, None, "b")];
        let after = [v(1, None, "a")];
        assert_eq!(
            kinds(&before, &after),
            [(1, None, "update_postimage"), (1, Some(5), "update_preimage"), (5, None, "delete")]
        );
    }
}
