//! `inlet replay`: quarantined rows go through the table's expectations again, after a fix
//! of the rules or the data, and the ones that pass land in the table, once.
//!
//! A row is identified by its quarantine file and its ordinal in that file (files never
//! change once committed). The table's commit carries the txn `inlet.replay.<table>` and the
//! identities it landed; the quarantine's commit that follows rewrites those files with
//! `_replayed_version` set, under the same txn version. A replay killed in between is
//! finished by the next one from the table's commit, so a row lands once.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Int64Array, RecordBatch, StringArray};
use arrow::compute::concat_batches;
use arrow::datatypes::{DataType, Schema, SchemaRef};
use deltalake::datafusion::datasource::MemTable;
use deltalake::datafusion::prelude::SessionContext;
use serde::{Deserialize, Serialize};
use tracing::info;

use crate::config::{Encoding, FileFormat, SourceConfig, TableName, WriteMode};
use crate::conform::{ChunkOrigin, TableColumns, conform};
use crate::error::{EngineError, Result};
use crate::expect::quality_metadata;
use crate::expect::{EXPECTATION_ERROR_CODE, checks_for};
use crate::ingest::{conform_spec, quarantine_schema_change};
use crate::run::{Connectors, Pipeline};
use crate::schema::Provenance;
use crate::schema::{ERROR_RULE, LOAD_ID, REPLAYED_VERSION, SOURCE_FILE, SOURCE_ROW, quarantine_schema};
use crate::source::{DecodeOptions, Input, SourceFile};
use crate::table::{ActiveFile, Commit, CommitKind, Table, table_url};
use crate::transform::{Writer, conform_batch};

/// The commit metadata key of a replay's landed rows.
const REPLAY_KEY: &str = "inlet_replay";

/// A quarantined row: its quarantine file and its ordinal in that file.
type Identity = (String, u32);

/// Which quarantined rows to replay.
#[derive(Debug, Clone, Default)]
pub struct ReplayOptions {
    /// Only rows that broke this expectation.
    pub rule: Option<String>,
    /// Only rows of this load (run id).
    pub load_id: Option<String>,
}

/// What a replay did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReplayReport {
    pub table: String,
    /// Quarantined rows chosen (not replayed before, matching the filters).
    pub candidates: u64,
    /// Rows that passed the expectations and landed.
    pub landed: u64,
    /// Rows that still break an expectation, or cannot be replayed; they stay quarantined.
    pub still_quarantined: u64,
    /// Why rows could not be replayed at all (e.g. parse errors).
    pub notes: Vec<String>,
    pub table_version: Option<i64>,
    pub quarantine_version: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quality: Option<inlet_quality::GateReport>,
}

/// The rows a replay commit landed: quarantine file -> ordinals.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Landed {
    files: BTreeMap<String, Vec<u32>>,
}

pub fn app_id(table: &str) -> String {
    format!("inlet.replay.{table}")
}

/// Replays the quarantined rows of `table` (a source's target or a derived table); records
/// of a source that did not parse are decoded again with its format (`connectors`).
pub async fn replay(
    pipeline: &Pipeline,
    connectors: &dyn Connectors,
    table: &str,
    options: &ReplayOptions,
) -> Result<ReplayReport> {
    let config_error = |message: String| EngineError::Config { path: pipeline.base_dir.join("inlet.toml"), message };
    let source = pipeline.source_for_table(table);
    let (expectations, derived) = match (source, pipeline.config.tables.get(table)) {
        (Some((_, source)), _) => (source.expect().to_vec(), None),
        (None, Some(config)) => (config.expect.clone(), Some(config)),
        (None, None) => return Err(config_error(format!("no source or table of this pipeline writes `{table}`"))),
    };
    if let Some(config) = derived
        && matches!(config.write, WriteMode::Overwrite | WriteMode::ReplacePartitions)
    {
        return Err(config_error(format!(
            "`{table}` is rebuilt from its query on every run (`write = \"{}\"`): run it again instead of replaying",
            config.write.as_str()
        )));
    }
    let name = TableName::parse(table).ok_or_else(|| config_error(format!("`{table}` is not `<layer>.<name>`")))?;
    let mut target = Table::open(table, table_url(&pipeline.lake, &name)?).await?;
    let mut quarantine =
        Table::open(&name.quarantine().to_string(), table_url(&pipeline.lake, &name.quarantine())?).await?;
    let app = app_id(table);
    let mut report = ReplayReport { table: table.to_owned(), ..ReplayReport::default() };
    finish_marking(&target, &mut quarantine, &app).await?;
    let (Some(schema), true) = (target.arrow_schema()?, quarantine.exists()) else {
        report.table_version = target.version();
        report.quarantine_version = quarantine.version();
        return Ok(report);
    };

    // The candidates, with their identity: rows an expectation sent here, and records that
    // did not parse.
    let files = quarantine.active_files().await?;
    let mut chosen: Vec<Identity> = Vec::new();
    let mut records: Vec<RecordBatch> = Vec::new();
    let mut unparsed: Vec<(Identity, RecordBatch)> = Vec::new();
    for file in &files {
        for (ordinal, row) in candidates(&quarantine, file, options).await? {
            report.candidates += 1;
            let code = text_at(&row, "_error_code").unwrap_or_default();
            if code == EXPECTATION_ERROR_CODE {
                chosen.push((file.path.clone(), ordinal));
                records.push(row);
            } else {
                unparsed.push(((file.path.clone(), ordinal), row));
            }
        }
    }
    // A whole response body an extractor could not read (record 0 of its request) is not a
    // record: it stays, for the page to be read again from the API.
    if source.is_some_and(|(_, config)| config.provenance() == Provenance::Requests) {
        let before = unparsed.len();
        unparsed.retain(|(_, row)| text_at(row, SOURCE_ROW).as_deref() != Some("0"));
        let bodies = before - unparsed.len();
        if bodies > 0 {
            report.still_quarantined += bodies as u64;
            report.notes.push(format!(
                "{bodies} whole response bodies stay: they are not records (the source reads their pages again)"
            ));
        }
    }
    let load_id = uuid::Uuid::now_v7().to_string();
    let now_micros = chrono::Utc::now().timestamp_micros();
    let mut reparsed: Vec<RecordBatch> = Vec::new();
    if !unparsed.is_empty() {
        match source {
            Some((name, config)) => {
                let (batch, identities, notes) =
                    reparse(pipeline, connectors, name, config, &schema, &unparsed, &load_id, now_micros).await?;
                report.still_quarantined += (unparsed.len() - identities.len()) as u64;
                report.notes.extend(notes);
                chosen.extend(identities);
                reparsed.extend(batch);
            }
            None => report.still_quarantined += unparsed.len() as u64,
        }
    }
    if chosen.is_empty() {
        report.table_version = target.version();
        report.quarantine_version = quarantine.version();
        return Ok(report);
    }

    // The rows as the table had them, then the table's expectations, as they are now.
    let data_schema = replay_schema(&schema, derived.is_none());
    let provenance = source.map(|(_, config)| config.provenance());
    let mut rows = decode(&records, &data_schema, provenance, &load_id, now_micros, table)?;
    if let Some(again) = reparsed.first() {
        // Parsed rows first came from `decode`'s candidates; both in the table's columns.
        let both = [conform_batch(&rows, &schema, table)?, conform_batch(again, &schema, table)?];
        rows = concat_batches(&schema, &both).map_err(|e| EngineError::arrow("replayed rows", e))?;
    }
    let sample = match derived {
        Some(config) => config.keys.clone(),
        None => provenance.unwrap_or_default().sample_columns(),
    };
    // Whole-commit checks (row_count, freshness) judge a run's commit, not a few replayed rows.
    let row_checks: Vec<inlet_quality::Expectation> = expectations
        .into_iter()
        .filter(|e| {
            !matches!(e.kind(), Ok(inlet_quality::Kind::RowCount { .. } | inlet_quality::Kind::Freshness { .. }))
        })
        .collect();
    let checks = checks_for(table, &row_checks, sample, &pipeline.lake).await?;
    let mut keep = Vec::with_capacity(rows.num_rows());
    let kept = match &checks {
        Some(checks) => {
            let checked = checks.apply(&rows)?;
            // Which rows passed: replayed rows are distinct, so match them by position.
            let passed: std::collections::HashSet<u32> = passed_rows(&rows, &checked.kept)?.into_iter().collect();
            keep.extend((0..rows.num_rows() as u32).map(|i| passed.contains(&i)));
            report.quality = Some(checks.verdict(now_micros)?);
            checked.kept
        }
        None => {
            keep.extend(std::iter::repeat_n(true, rows.num_rows()));
            rows.clone()
        }
    };
    let mut landed = Landed::default();
    for ((file, ordinal), passed) in chosen.iter().zip(&keep) {
        if *passed {
            landed.files.entry(file.clone()).or_default().push(*ordinal);
        } else {
            report.still_quarantined += 1;
        }
    }
    report.landed = kept.num_rows() as u64;
    if kept.num_rows() == 0 {
        report.table_version = target.version();
        report.quarantine_version = quarantine.version();
        return Ok(report);
    }

    // Land them with the table's own strategy, in one commit that names them.
    let txn = target.app_version(&app).await?.unwrap_or(0) + 1;
    let (adds, removes, cdc, kind, new_schema) = match derived {
        None => {
            let mut writer = target.writer_factory(&[]).writer(kept.schema());
            writer.write(&kept).await?;
            (writer.close().await?, Vec::new(), Vec::new(), CommitKind::Append, None)
        }
        Some(config) => {
            let context = SessionContext::new();
            target.register_store(&context.state())?;
            let memory = MemTable::try_new(kept.schema(), vec![vec![kept.clone()]])
                .map_err(|e| EngineError::sql(table.to_owned(), e))?;
            let frame = context.read_table(Arc::new(memory)).map_err(|e| EngineError::sql(table.to_owned(), e))?;
            let writer = Writer { table, config, target: &target, now_micros, checks: None, window: None };
            let written = writer.write(&context, frame).await?;
            let Some(planned) = written.commit else {
                // Every row was already there: nothing to publish, only marks to set.
                mark(&mut quarantine, &files, &landed, target.version().unwrap_or(0), &app, txn).await?;
                report.table_version = target.version();
                report.quarantine_version = quarantine.version();
                return Ok(report);
            };
            let counts = written.rows;
            if counts.unchanged > 0 {
                report.notes.push(format!(
                    "{} rows changed nothing: the table holds the same or a newer row for their key",
                    counts.unchanged
                ));
            }
            (planned.adds, planned.removes, planned.cdc, planned.kind, planned.schema)
        }
    };
    let landed_json =
        serde_json::to_value(&landed).map_err(|e| EngineError::Internal(format!("serialising a replay: {e}")))?;
    let summary = format!("inlet replay {table}: {} quarantined rows landed (load {load_id})", report.landed);
    let version = target
        .commit(Commit {
            adds,
            removes,
            cdc,
            schema: new_schema,
            partition_by: derived.map(|c| c.partition_by.clone()).unwrap_or_default(),
            change_data_feed: false,
            deletion_vectors: false,
            operation: kind,
            app_id: app.clone(),
            app_version: txn,
            metadata: quality_metadata(
                HashMap::from([(REPLAY_KEY.to_owned(), landed_json)]),
                report.quality.as_ref(),
                summary,
            )?,
        })
        .await?;
    info!(table, version, rows = report.landed, "replayed");
    mark(&mut quarantine, &files, &landed, version, &app, txn).await?;
    if let Err(err) = crate::audit::record_operation(
        &pipeline.lake,
        &pipeline.config.pipeline.name,
        "replay",
        table,
        version..=version,
        now_micros,
    )
    .await
    {
        tracing::warn!(table, error = %err, "run history not written");
    }
    report.table_version = Some(version);
    report.quarantine_version = quarantine.version();
    Ok(report)
}

/// The unreplayed rows of one quarantine file that match the filters, with their ordinals.
async fn candidates(quarantine: &Table, file: &ActiveFile, options: &ReplayOptions) -> Result<Vec<(u32, RecordBatch)>> {
    let mut rows = Vec::new();
    let mut ordinal = 0u32;
    for batch in quarantine.read_file(&file.path).await? {
        let replayed = batch.column_by_name(REPLAYED_VERSION).cloned();
        for row in 0..batch.num_rows() {
            let this = ordinal;
            ordinal += 1;
            if replayed.as_ref().is_some_and(|r| r.is_valid(row)) {
                continue;
            }
            let one = batch.slice(row, 1);
            if let Some(rule) = &options.rule
                && !text_at(&one, ERROR_RULE).is_some_and(|rules| rules.split(", ").any(|r| r == rule))
                && text_at(&one, "_error_code").as_deref() != Some(rule.as_str())
            {
                continue;
            }
            if let Some(load) = &options.load_id
                && text_at(&one, LOAD_ID).as_deref() != Some(load.as_str())
            {
                continue;
            }
            rows.push((this, one));
        }
    }
    Ok(rows)
}

fn text_at(row: &RecordBatch, column: &str) -> Option<String> {
    let column = row.column_by_name(column)?;
    let text = arrow::compute::cast(column, &DataType::Utf8).ok()?;
    let text = text.as_any().downcast_ref::<StringArray>()?;
    text.is_valid(0).then(|| text.value(0).to_owned())
}

/// The columns a replayed row is decoded into: the table's, without bronze metadata (added
/// back after) or scd2 history (the write adds it).
fn replay_schema(schema: &SchemaRef, bronze: bool) -> SchemaRef {
    let history = ["_valid_from", "_valid_to", "_is_current", "_row_hash"];
    let fields: Vec<_> = schema
        .fields()
        .iter()
        .filter(|f| {
            let metadata = bronze && crate::schema::is_metadata_column(f.name());
            !metadata && !history.contains(&f.name().as_str())
        })
        .cloned()
        .collect();
    Arc::new(Schema::new(fields))
}

/// Quarantine rows back into the table's columns: `_raw_record` as JSON, and for a bronze
/// table the metadata columns (file and row from the quarantine, this replay's load).
fn decode(
    records: &[RecordBatch],
    schema: &SchemaRef,
    bronze: Option<Provenance>,
    load_id: &str,
    now_micros: i64,
    table: &str,
) -> Result<RecordBatch> {
    let mut json = String::new();
    for record in records {
        json.push_str(&text_at(record, "_raw_record").unwrap_or_else(|| "{}".to_owned()));
        json.push('\n');
    }
    // Loose reading: fields the table lacks are ignored, missing ones are NULL.
    let reader = arrow_json::ReaderBuilder::new(schema.clone())
        .with_strict_mode(false)
        .build(std::io::Cursor::new(json.into_bytes()))
        .map_err(|e| EngineError::arrow("decoding quarantined rows", e))?;
    let batches = reader
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| EngineError::arrow("decoding quarantined rows", e))?;
    let data = concat_batches(schema, &batches).map_err(|e| EngineError::arrow("decoding quarantined rows", e))?;
    let Some(provenance) = bronze else {
        return conform_batch(&data, schema, table);
    };
    let n = data.num_rows();
    let files: Vec<Option<String>> = records.iter().map(|r| text_at(r, SOURCE_FILE)).collect();
    let lines: Vec<Option<i64>> =
        records.iter().map(|r| text_at(r, SOURCE_ROW).and_then(|t| t.parse::<i64>().ok())).collect();
    let mut fields: Vec<_> = schema.fields().iter().cloned().collect();
    fields.extend(provenance.fields().into_iter().map(Arc::new));
    let mut columns: Vec<ArrayRef> = data.columns().to_vec();
    // The quarantine's `_source_file` names the unit: a file, or a request's URL. Which
    // page of its sweep a request was is not kept there.
    columns.push(Arc::new(StringArray::from(files)));
    if provenance == Provenance::Requests {
        columns.push(Arc::new(Int64Array::new_null(n)));
    }
    columns.push(Arc::new(Int64Array::from(lines)));
    columns.push(Arc::new(crate::conform::repeated(load_id, n)));
    columns.push(Arc::new(
        arrow::array::TimestampMicrosecondArray::from_iter_values(std::iter::repeat_n(now_micros, n))
            .with_timezone("UTC"),
    ));
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).map_err(|e| EngineError::arrow("replayed rows", e))
}

/// Records of a source that did not parse, decoded again with the source's format and its
/// type hints as they are now (behind the header of their file, for CSV). Returns the rows
/// that parse, in the table's columns with their original `_source_row`, their identities,
/// and notes on what could not be tried.
#[allow(clippy::too_many_arguments)]
async fn reparse(
    pipeline: &Pipeline,
    connectors: &dyn Connectors,
    name: &str,
    config: &SourceConfig,
    schema: &SchemaRef,
    unparsed: &[(Identity, RecordBatch)],
    load_id: &str,
    now_micros: i64,
) -> Result<(Option<RecordBatch>, Vec<Identity>, Vec<String>)> {
    let format = connectors.format(name, pipeline)?;
    let spec = conform_spec(name, config);
    let columns = std::sync::Mutex::new(TableColumns::existing(schema, config.on_new_columns(), config.provenance()));
    // CSV records are decoded behind their file's header, read again from the file.
    let csv = config.files().filter(|f| f.format == FileFormat::Csv);
    let header_from = match csv {
        Some(files) if files.csv.header => match connectors.source(name, pipeline)? {
            crate::source::Source::Files { files, .. } => Some(files),
            crate::source::Source::Extractor(_) => None,
        },
        _ => None,
    };
    let mut by_file: BTreeMap<String, Vec<&(Identity, RecordBatch)>> = BTreeMap::new();
    for entry in unparsed {
        by_file.entry(text_at(&entry.1, SOURCE_FILE).unwrap_or_default()).or_default().push(entry);
    }
    let mut batches = Vec::new();
    let mut identities = Vec::new();
    let mut notes = Vec::new();
    for (file, entries) in by_file {
        let mut body: Vec<u8> = Vec::new();
        if let Some(files) = &header_from {
            let header = match files.open(&SourceFile::new(file.clone(), 0, 0)).await {
                Ok(input) => tokio::task::spawn_blocking(move || {
                    let mut reader = std::io::BufReader::new(input.into_read());
                    let mut line = Vec::new();
                    std::io::BufRead::read_until(&mut reader, b'\n', &mut line).map(|_| line)
                })
                .await
                .map_err(|e| e.to_string())
                .and_then(|read| read.map_err(|e| e.to_string())),
                Err(err) => Err(err.to_string()),
            };
            match header {
                Ok(line) if !line.is_empty() => body.extend(line),
                Ok(_) | Err(_) => {
                    notes.push(format!("{} records of `{file}` stay: its header cannot be read", entries.len()));
                    continue;
                }
            }
            if !body.ends_with(b"\n") {
                body.push(b'\n');
            }
        }
        for (_, row) in &entries {
            let raw = text_at(row, "_raw_record").unwrap_or_default();
            match csv.map(|f| f.csv.encoding) {
                Some(Encoding::Latin1) => body.extend(raw.chars().map(|c| u8::try_from(u32::from(c)).unwrap_or(b'?'))),
                Some(_) => body.extend(raw.as_bytes()),
                // JSON: one record a line (a line break in JSON is only ever whitespace).
                None => body.extend(raw.replace(['\n', '\r'], " ").as_bytes()),
            }
            body.push(b'\n');
        }
        let origin = ChunkOrigin { unit: &file, page: None, load_id, ingested_at_micros: now_micros };
        let input = Input::Stream(Box::new(std::io::Cursor::new(body)));
        let mut decoder = format.decoder(input, &DecodeOptions::text(4096)).map_err(|e| EngineError::Transform {
            table: config.target().to_owned(),
            message: format!("decoding quarantined records of `{file}`: {e}"),
        })?;
        loop {
            let chunk = decoder.next_chunk().map_err(|e| EngineError::Transform {
                table: config.target().to_owned(),
                message: format!("decoding quarantined records of `{file}`: {e}"),
            })?;
            let Some(chunk) = chunk else { break };
            let conformed = conform(chunk, &spec, &columns, &origin)?;
            let batch = conformed.batch;
            // The record numbers of the replayed text, back to the file's own.
            let positions = batch
                .column_by_name(SOURCE_ROW)
                .and_then(|c| c.as_any().downcast_ref::<Int64Array>().cloned())
                .ok_or_else(|| EngineError::Internal("decoded rows without `_source_row`".into()))?;
            let mut original = Vec::with_capacity(batch.num_rows());
            for position in positions.iter() {
                let index = position.and_then(|p| usize::try_from(p - 1).ok()).filter(|&i| i < entries.len());
                let Some(index) = index else {
                    return Err(EngineError::Internal(format!("a replayed record of `{file}` has no position")));
                };
                let (identity, row) = entries[index];
                identities.push(identity.clone());
                original.push(text_at(row, SOURCE_ROW).and_then(|t| t.parse::<i64>().ok()));
            }
            let index = batch.schema().index_of(SOURCE_ROW).map_err(|e| EngineError::arrow("replayed rows", e))?;
            let mut columns = batch.columns().to_vec();
            columns[index] = Arc::new(Int64Array::from(original));
            batches.push(
                RecordBatch::try_new(batch.schema(), columns).map_err(|e| EngineError::arrow("replayed rows", e))?,
            );
        }
    }
    let batch = if batches.is_empty() {
        None
    } else {
        let conformed: Vec<RecordBatch> =
            batches.iter().map(|b| conform_batch(b, schema, config.target())).collect::<Result<_>>()?;
        Some(concat_batches(schema, &conformed).map_err(|e| EngineError::arrow("replayed rows", e))?)
    };
    Ok((batch, identities, notes))
}

/// Positions of `kept`'s rows in `all` (kept is an ordered subset of all).
fn passed_rows(all: &RecordBatch, kept: &RecordBatch) -> Result<Vec<u32>> {
    let converter = arrow::row::RowConverter::new(
        all.schema().fields().iter().map(|f| arrow::row::SortField::new(f.data_type().clone())).collect(),
    )
    .map_err(|e| EngineError::arrow("matching replayed rows", e))?;
    let a = converter.convert_columns(all.columns()).map_err(|e| EngineError::arrow("matching replayed rows", e))?;
    let k = converter.convert_columns(kept.columns()).map_err(|e| EngineError::arrow("matching replayed rows", e))?;
    let mut positions = Vec::with_capacity(kept.num_rows());
    let mut next = 0;
    for row in 0..kept.num_rows() {
        while next < all.num_rows() && a.row(next) != k.row(row) {
            next += 1;
        }
        positions.push(next as u32);
        next += 1;
    }
    Ok(positions)
}

/// Rewrites the quarantine files holding landed rows with `_replayed_version` set for them.
async fn mark(
    quarantine: &mut Table,
    files: &[ActiveFile],
    landed: &Landed,
    version: i64,
    app: &str,
    txn: i64,
) -> Result<()> {
    // A file the rows landed from that is gone was rewritten (compacted) since: its rows
    // can no longer be told by position, and marking the others would say all were.
    if let Some(gone) = landed.files.keys().find(|path| !files.iter().any(|f| f.path == **path)) {
        return Err(EngineError::Ledger {
            table: quarantine.name.clone(),
            app_id: app.to_owned(),
            message: format!(
                "replay {txn} landed rows of `{gone}`, which is no longer in the quarantine (compacted since?); set `{REPLAYED_VERSION}` = {version} on those rows by hand before replaying again"
            ),
        });
    }
    let schema = quarantine_schema();
    let mut writer = quarantine.writer_factory(&[]).writer(schema.clone());
    let mut removes = Vec::new();
    for file in files {
        let Some(ordinals) = landed.files.get(&file.path) else { continue };
        let marked: std::collections::HashSet<u32> = ordinals.iter().copied().collect();
        let mut ordinal = 0u32;
        for batch in quarantine.read_file(&file.path).await? {
            let batch = conform_batch(&batch, &schema, &quarantine.name)?;
            let previous = batch.column_by_name(REPLAYED_VERSION).cloned();
            let values: Int64Array = (0..batch.num_rows())
                .map(|row| {
                    let this = ordinal + row as u32;
                    if marked.contains(&this) {
                        Some(version)
                    } else {
                        previous.as_ref().and_then(|p| {
                            p.as_any().downcast_ref::<Int64Array>().and_then(|p| p.is_valid(row).then(|| p.value(row)))
                        })
                    }
                })
                .collect();
            ordinal += batch.num_rows() as u32;
            let index = schema.index_of(REPLAYED_VERSION).map_err(|e| EngineError::arrow("quarantine columns", e))?;
            let mut columns = batch.columns().to_vec();
            columns[index] = Arc::new(values);
            let batch = RecordBatch::try_new(schema.clone(), columns)
                .map_err(|e| EngineError::arrow("marking replayed rows", e))?;
            writer.write(&batch).await?;
        }
        removes.push(file.remove.clone());
    }
    let adds = writer.close().await?;
    quarantine
        .commit(Commit {
            adds,
            removes,
            cdc: Vec::new(),
            schema: quarantine_schema_change(quarantine)?,
            partition_by: Vec::new(),
            change_data_feed: false,
            deletion_vectors: false,
            operation: CommitKind::Update { predicate: format!("{REPLAYED_VERSION} = {version}") },
            app_id: app.to_owned(),
            app_version: txn,
            metadata: HashMap::from([(
                "userMetadata".to_owned(),
                serde_json::Value::String(format!("inlet replay: rows landed in version {version} marked")),
            )]),
        })
        .await?;
    Ok(())
}

/// A replay killed between the table's commit and the quarantine's: mark what it landed.
async fn finish_marking(target: &Table, quarantine: &mut Table, app: &str) -> Result<()> {
    let Some(txn) = target.app_version(app).await? else { return Ok(()) };
    if quarantine.app_version(app).await?.is_some_and(|v| v >= txn) {
        return Ok(());
    }
    if let crate::log::TxnCommit::Found(commit) = crate::log::commit_of_txn(target, app, None).await?
        && let Some(landed) = commit.info::<Landed>(&target.name, REPLAY_KEY)?
    {
        let files = quarantine.active_files().await?;
        info!(table = %target.name, version = commit.version, "marking the rows of an interrupted replay");
        return mark(quarantine, &files, &landed, commit.version, app, txn).await;
    }
    // Replaying again without knowing which rows landed could land them twice.
    Err(EngineError::Ledger {
        table: target.name.clone(),
        app_id: app.to_owned(),
        message: format!(
            "replay {txn} landed rows the quarantine does not show as replayed, and its commit is no longer in the log; set `{REPLAYED_VERSION}` on them by hand before replaying again"
        ),
    })
}
