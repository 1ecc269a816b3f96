//! Staging a commit group: every unit of input (a file, a page) decoded, conformed, checked
//! and written to Parquet files that nothing references yet.
//!
//! Each unit is decoded and conformed on a blocking thread while its task writes what comes
//! out, so a unit that fails half-way contributes nothing: its rows reach a writer only
//! through a writer of its own (big units), or once the unit is read whole (small units,
//! whose rows are held and then written to writers the group's small units share, so a
//! thousand small drops make a handful of files, not a thousand). Units of a file source
//! are staged `parallel` at a time and each stands alone; the pages of an extractor are
//! staged in order, one at a time, and the first that fails ends the group, since the
//! position of a page covers every page before it.

use std::sync::{Arc, Mutex};

use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use deltalake::kernel::Add;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::conform::{ChunkOrigin, ConformSpec, Conformed, TableColumns, conform};
use crate::error::{EngineError, ErrorKind, Result};
use crate::run::RunObserver;
use crate::schema::quarantine_schema;
use crate::source::{BadRecord, DecodeOptions, FileSource, Format, RawChunk, SourceError, SourceFile};
use crate::table::{FileWriter, WriterFactory};

/// One unit of a group.
pub(crate) struct Unit {
    /// The file's path, or the page's URL (secrets removed).
    pub name: String,
    /// The page's number in its sweep (extractors).
    pub page: Option<i64>,
    /// Input bytes, as stored or received.
    pub size_bytes: u64,
    pub input: UnitInput,
    /// The source's position once this unit (and every one before it) is in the table
    /// (extractors).
    pub position: Option<serde_json::Value>,
}

/// How a unit reads.
pub(crate) enum UnitInput {
    /// A file, opened by its source and decoded by the format.
    File { files: Arc<dyn FileSource>, format: Arc<dyn Format>, file: SourceFile },
    /// Records an extractor decoded already.
    Decoded(RawChunk),
}

/// Where a group's units come from: a planned list of files, or pages as they arrive.
#[async_trait::async_trait]
pub(crate) trait Feed: Send {
    /// The next unit of the group, `None` when the group is complete.
    async fn next_unit(&mut self) -> Option<Unit>;
}

#[async_trait::async_trait]
impl Feed for std::vec::IntoIter<Unit> {
    async fn next_unit(&mut self) -> Option<Unit> {
        self.next()
    }
}

/// Everything a unit's staging needs, shared by the units of a group.
#[derive(Clone)]
pub(crate) struct StageJob {
    pub spec: Arc<ConformSpec>,
    pub columns: Arc<Mutex<TableColumns>>,
    pub data: WriterFactory,
    pub quarantine: WriterFactory,
    pub load_id: String,
    pub ingested_at_micros: i64,
    pub rows_per_chunk: usize,
    /// The source's expectations over this commit group.
    pub checks: Option<Arc<crate::expect::Checks>>,
}

/// What a unit staged.
pub(crate) struct StagedUnit {
    pub data_adds: Vec<Add>,
    /// The rows of a small unit, held to be written with the group's other small units.
    held: Held,
    pub quarantine_adds: Vec<Add>,
    pub rows: u64,
    pub quarantined: u64,
}

/// A small unit's rows and quarantine rows, held while they fit [`SMALL_UNIT_ROWS_BYTES`].
#[derive(Default)]
struct Held {
    rows: Vec<RecordBatch>,
    quarantine: Vec<RecordBatch>,
    bytes: usize,
}

/// Rows of one unit (Arrow memory) held to share Parquet files with the other small units
/// of its commit, rather than getting files of their own. A unit that outgrows it gets
/// files of its own.
const SMALL_UNIT_ROWS_BYTES: usize = 16 * 1024 * 1024;

/// How a unit's staging ended.
pub(crate) enum Staged {
    Done(StagedUnit),
    /// The unit cannot be read; it stays un-ingested (a file is retried next run).
    Unreadable(String),
    /// The source must stop (e.g. new columns with `on_new_columns = "fail"`).
    Stop(EngineError),
}

/// A unit as staged: what it was, and how it ended.
pub(crate) struct Outcome {
    pub name: String,
    pub size_bytes: u64,
    pub position: Option<serde_json::Value>,
    pub staged: Staged,
}

/// What the small units of a group staged through their shared writers.
#[derive(Default)]
pub(crate) struct SharedAdds {
    pub data: Vec<Add>,
    pub quarantine: Vec<Add>,
}

/// Stages the units `feed` gives, `parallel` at a time (in order, one at a time and up to
/// the first that fails, when `sequential`): outcomes in the feed's order, and the files
/// the small units' rows were written to together.
pub(crate) async fn stage_group(
    job: StageJob,
    feed: &mut dyn Feed,
    parallel: usize,
    sequential: bool,
    source_name: &str,
    observer: &dyn RunObserver,
) -> Result<(Vec<Outcome>, SharedAdds)> {
    let mut shared = Shared::default();
    let parallel = if sequential { 1 } else { parallel.max(1) };
    let outcomes = match stage_units(&job, feed, parallel, sequential, source_name, observer, &mut shared).await {
        Ok(outcomes) => outcomes,
        Err(err) => {
            shared.abort().await;
            return Err(err);
        }
    };
    if outcomes.iter().any(|o| matches!(o.staged, Staged::Stop(_))) {
        shared.abort().await;
        return Ok((outcomes, SharedAdds::default()));
    }
    Ok((outcomes, shared.close().await?))
}

/// The writers small units share within a group: one per schema, since units of one group
/// can be read before and after a column was added.
#[derive(Default)]
struct Shared {
    data: Vec<FileWriter>,
    quarantine: Vec<FileWriter>,
}

impl Shared {
    async fn write(writers: &mut Vec<FileWriter>, factory: &WriterFactory, batch: &RecordBatch) -> Result<()> {
        let index = match writers.iter().position(|w| w.schema() == &batch.schema()) {
            Some(index) => index,
            None => {
                writers.push(factory.writer(batch.schema()));
                writers.len() - 1
            }
        };
        match writers.get_mut(index) {
            Some(writer) => writer.write(batch).await,
            None => Err(EngineError::Internal("a shared writer vanished".into())),
        }
    }

    async fn abort(self) {
        abort_all(self.data.into_iter().chain(self.quarantine).collect()).await;
    }

    /// Closes every writer; after a failure, aborts the rest.
    async fn close(self) -> Result<SharedAdds> {
        let data = match close_all(self.data).await {
            Ok(adds) => adds,
            Err(err) => {
                abort_all(self.quarantine).await;
                return Err(err);
            }
        };
        Ok(SharedAdds { data, quarantine: close_all(self.quarantine).await? })
    }
}

/// Closes every writer; after a failure, aborts the rest.
async fn close_all(writers: Vec<FileWriter>) -> Result<Vec<Add>> {
    let mut adds = Vec::new();
    let mut writers = writers.into_iter();
    while let Some(writer) = writers.next() {
        match writer.close().await {
            Ok(staged) => adds.extend(staged),
            Err(err) => {
                abort_all(writers.collect()).await;
                return Err(err);
            }
        }
    }
    Ok(adds)
}

async fn abort_all(writers: Vec<FileWriter>) {
    for writer in writers {
        writer.abort().await;
    }
}

/// What a unit is, without its input.
struct UnitMeta {
    name: String,
    size_bytes: u64,
    position: Option<serde_json::Value>,
}

/// The outcomes of [`stage_group`], small units' rows written with `shared`.
async fn stage_units(
    job: &StageJob,
    feed: &mut dyn Feed,
    parallel: usize,
    sequential: bool,
    source_name: &str,
    observer: &dyn RunObserver,
    shared: &mut Shared,
) -> Result<Vec<Outcome>> {
    let mut metas: Vec<UnitMeta> = Vec::new();
    let mut staged: Vec<Option<Staged>> = Vec::new();
    let mut tasks = JoinSet::new();
    let mut exhausted = false;
    loop {
        // A new table takes its columns from its first unit with any, not from whichever is
        // decoded first: units go one at a time until the columns are set.
        let establishing = job.columns.lock().map(|c| !c.established()).unwrap_or(false);
        let limit = if establishing { 1 } else { parallel };
        while !exhausted && tasks.len() < limit {
            let Some(unit) = feed.next_unit().await else {
                exhausted = true;
                break;
            };
            let index = metas.len();
            metas.push(UnitMeta {
                name: unit.name.clone(),
                size_bytes: unit.size_bytes,
                position: unit.position.clone(),
            });
            staged.push(None);
            let job = job.clone();
            tasks.spawn(async move { (index, stage_unit(job, unit).await) });
        }
        let Some(joined) = tasks.join_next().await else {
            break;
        };
        let (index, outcome) = joined.map_err(|e| EngineError::Internal(format!("unit task failed: {e}")))?;
        let mut outcome = outcome?;
        let failed = !matches!(outcome, Staged::Done(_));
        if let Staged::Done(unit) = &mut outcome {
            let held = std::mem::take(&mut unit.held);
            for batch in held.rows {
                Shared::write(&mut shared.data, &job.data, &batch).await?;
            }
            for batch in held.quarantine {
                Shared::write(&mut shared.quarantine, &job.quarantine, &batch).await?;
            }
        }
        observer.file_staged(source_name, &metas[index].name, metas[index].size_bytes);
        // In order, a unit's position covers the ones before it: only the latest is kept
        // (positions can be large, and a group can hold many pages).
        if sequential
            && !failed
            && let Some(previous) = index.checked_sub(1).and_then(|i| metas.get_mut(i))
        {
            previous.position = None;
        }
        staged[index] = Some(outcome);
        // A page's position covers the pages before it: nothing after a failed one counts.
        if sequential && failed {
            exhausted = true;
        }
    }
    metas
        .into_iter()
        .zip(staged)
        .map(|(meta, staged)| {
            let staged = staged.ok_or_else(|| EngineError::Internal("a unit task vanished".into()))?;
            Ok(Outcome { name: meta.name, size_bytes: meta.size_bytes, position: meta.position, staged })
        })
        .collect()
}

enum Message {
    Chunk(Conformed),
    Unreadable(SourceError),
    Failed(EngineError),
}

/// Decodes and conforms a unit on a blocking thread while this task stages its rows.
async fn stage_unit(job: StageJob, unit: Unit) -> Result<Staged> {
    let Unit { name, page, input, .. } = unit;
    // Opening is IO: done here, asynchronously; reading and decoding on the blocking thread.
    let decode = match input {
        UnitInput::File { files, format, file } => match files.open(&file).await {
            Ok(opened) => Decode::File(opened, format),
            Err(err) => return Ok(Staged::Unreadable(err.to_string())),
        },
        UnitInput::Decoded(chunk) => Decode::Chunk(chunk),
    };
    let (tx, mut rx) = mpsc::channel::<Message>(2);
    let decode_job = job.clone();
    let decode_name = name.clone();
    let decoder = tokio::task::spawn_blocking(move || decode_blocking(&decode_job, &decode_name, page, decode, &tx));

    let mut data: Option<FileWriter> = None;
    let mut data_adds = Vec::new();
    // The unit's rows while it is small; `None` once it has files of its own.
    let mut held: Option<Held> = Some(Held::default());
    let mut quarantine: Option<FileWriter> = None;
    let mut rows = 0u64;
    let mut quarantined = 0u64;
    let mut outcome = None;
    while let Some(message) = rx.recv().await {
        match message {
            Message::Chunk(chunk) => {
                let mut bad = Vec::new();
                if !chunk.bad.is_empty() {
                    bad.push(quarantine_batch(&chunk.bad, &name, &job.load_id, job.ingested_at_micros)?);
                    quarantined += chunk.bad.len() as u64;
                }
                let mut batch = chunk.batch;
                if let Some(checks) = &job.checks
                    && batch.num_rows() > 0
                {
                    let checked = checks.apply(&batch)?;
                    if let Some((rows, rules)) = checked.quarantined {
                        let rows = crate::expect::quarantine_rows(
                            &rows,
                            &rules,
                            &name,
                            &job.load_id,
                            job.ingested_at_micros,
                            true,
                        )?;
                        quarantined += rows.num_rows() as u64;
                        bad.push(rows);
                    }
                    batch = checked.kept;
                }
                rows += batch.num_rows() as u64;
                let kept: Vec<RecordBatch> = (batch.num_rows() > 0).then_some(batch).into_iter().collect();
                let (batches, bad) = match held.as_mut() {
                    Some(small) => {
                        small.bytes += kept.iter().chain(&bad).map(RecordBatch::get_array_memory_size).sum::<usize>();
                        small.rows.extend(kept);
                        small.quarantine.extend(bad);
                        if small.bytes <= SMALL_UNIT_ROWS_BYTES {
                            continue;
                        }
                        let small = held.take().unwrap_or_default();
                        (small.rows, small.quarantine)
                    }
                    None => (kept, bad),
                };
                for batch in bad {
                    quarantine.get_or_insert_with(|| job.quarantine.writer(quarantine_schema())).write(&batch).await?;
                }
                for batch in batches {
                    // A column was added since this unit's writer started: finish it, start another.
                    if data.as_ref().is_some_and(|w| w.schema() != &batch.schema())
                        && let Some(writer) = data.take()
                    {
                        data_adds.extend(writer.close().await?);
                    }
                    data.get_or_insert_with(|| job.data.writer(batch.schema())).write(&batch).await?;
                }
            }
            Message::Unreadable(err) => {
                outcome = Some(Staged::Unreadable(err.to_string()));
                break;
            }
            Message::Failed(err) => {
                outcome = Some(match err.kind() {
                    ErrorKind::User if !matches!(err, EngineError::NewColumns { .. }) => {
                        Staged::Unreadable(err.to_string())
                    }
                    _ => Staged::Stop(err),
                });
                break;
            }
        }
    }
    drop(rx);
    decoder.await.map_err(|e| EngineError::Internal(format!("decoder of `{name}` panicked: {e}")))?;
    if let Some(outcome) = outcome {
        if let Some(writer) = data {
            writer.abort().await;
        }
        if let Some(writer) = quarantine {
            writer.abort().await;
        }
        return Ok(outcome);
    }
    if let Some(writer) = data {
        data_adds.extend(writer.close().await?);
    }
    let quarantine_adds = match quarantine {
        Some(writer) => writer.close().await?,
        None => Vec::new(),
    };
    Ok(Staged::Done(StagedUnit { data_adds, held: held.unwrap_or_default(), quarantine_adds, rows, quarantined }))
}

/// What the blocking thread decodes.
enum Decode {
    File(crate::source::Input, Arc<dyn Format>),
    Chunk(RawChunk),
}

fn decode_blocking(job: &StageJob, name: &str, page: Option<i64>, decode: Decode, tx: &mpsc::Sender<Message>) {
    let origin = ChunkOrigin { unit: name, page, load_id: &job.load_id, ingested_at_micros: job.ingested_at_micros };
    let conformed = |chunk: RawChunk| conform(chunk, &job.spec, &job.columns, &origin).map_err(Message::Failed);
    let result = (|| -> std::result::Result<(), Message> {
        match decode {
            Decode::Chunk(chunk) => {
                let _ = tx.blocking_send(Message::Chunk(conformed(chunk)?));
            }
            Decode::File(input, format) => {
                // Columns are typed as the table has them when this file starts; one added
                // while it is read stays text, as in a file read before the table had it.
                let types = match job.columns.lock() {
                    Ok(columns) => columns.decode_types(&job.spec.hints),
                    Err(_) => return Err(Message::Failed(EngineError::Internal("table columns lock poisoned".into()))),
                };
                let options = DecodeOptions { rows_per_chunk: job.rows_per_chunk, types };
                let mut decoder = format.decoder(input, &options).map_err(Message::Unreadable)?;
                while let Some(chunk) = decoder.next_chunk().map_err(Message::Unreadable)? {
                    if tx.blocking_send(Message::Chunk(conformed(chunk)?)).is_err() {
                        return Ok(());
                    }
                }
            }
        }
        Ok(())
    })();
    if let Err(message) = result {
        let _ = tx.blocking_send(message);
    }
}

/// Quarantine rows in the quarantine table's schema; `unit` is the file's path or the
/// page's URL.
pub fn quarantine_batch(bad: &[BadRecord], unit: &str, load_id: &str, ingested_at_micros: i64) -> Result<RecordBatch> {
    let n = bad.len();
    let columns: Vec<ArrayRef> = vec![
        Arc::new(crate::conform::repeated(unit, n)),
        Arc::new(Int64Array::from_iter_values(bad.iter().map(|b| b.row))),
        Arc::new(StringArray::from_iter_values(bad.iter().map(|b| b.code.as_str()))),
        Arc::new(StringArray::from_iter_values(bad.iter().map(|b| b.message.as_str()))),
        Arc::new(StringArray::from_iter(bad.iter().map(|b| b.raw.as_deref()))),
        Arc::new(crate::conform::repeated(load_id, n)),
        Arc::new(
            TimestampMicrosecondArray::from_iter_values(std::iter::repeat_n(ingested_at_micros, n))
                .with_timezone("UTC"),
        ),
        Arc::new(StringArray::new_null(n)),
        Arc::new(Int64Array::new_null(n)),
    ];
    RecordBatch::try_new(quarantine_schema(), columns).map_err(|e| EngineError::arrow("assembling quarantine rows", e))
}
