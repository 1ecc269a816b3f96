//! Evaluates a table's expectations on the batches about to be committed.
//!
//! [`Checks`] is shared by every writer task of one commit: row checks run as DataFusion
//! physical expressions outside any lock; `unique` keys, the latest `freshness` value and the
//! [`Gate`]'s tallies sit behind one short lock per batch. `relationships` reads its target
//! column once, when the checks are built. What a violation does to the rows (kept, dropped,
//! quarantined) and whether the commit may go ahead is decided by `inlet_quality`.

use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use arrow::array::{Array, ArrayRef, BooleanArray, BooleanBuilder, Int64Array, RecordBatch, StringArray, UInt32Array};
use arrow::compute::kernels::boolean::{not, or};
use arrow::compute::{cast, filter_record_batch, prep_null_mask_filter, take_record_batch};
use arrow::datatypes::{DataType, SchemaRef, TimeUnit};
use arrow::row::{RowConverter, SortField};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use deltalake::datafusion::common::DFSchema;
use deltalake::datafusion::logical_expr::simplify::SimplifyContext;
use deltalake::datafusion::optimizer::simplify_expressions::ExprSimplifier;
use deltalake::datafusion::physical_expr::PhysicalExpr;
use deltalake::datafusion::prelude::SessionContext;
use inlet_quality::{Expectation, Gate, GateReport, Kind, Outcome};

use crate::error::{EngineError, Result};
use crate::schema::{SOURCE_FILE, SOURCE_ROW, SOURCE_URL};

/// `_error_code` of rows quarantined by an expectation.
pub const EXPECTATION_ERROR_CODE: &str = "expectation";

/// Row checks compiled for one input schema.
type Compiled = Vec<Option<Arc<dyn PhysicalExpr>>>;

/// The expectations of one table over one commit.
pub struct Checks {
    table: String,
    kinds: Vec<Kind>,
    names: Vec<String>,
    actions: Vec<inlet_quality::Action>,
    /// Columns that identify a row in samples (keys, or file and row); all columns when empty.
    sample_columns: Vec<String>,
    /// `relationships`: the values of the target column, as text.
    relations: Vec<Option<Arc<HashSet<String>>>>,
    compiled: Mutex<Vec<(SchemaRef, Arc<Compiled>)>>,
    state: Mutex<State>,
    /// Quarantined rows held for a later write ([`Checks::keep`]).
    held: Mutex<Vec<(RecordBatch, Vec<String>)>>,
}

struct State {
    gate: Gate,
    unique: Vec<Option<Seen>>,
    /// `freshness`: the latest value seen, in microseconds.
    latest: Vec<Option<i64>>,
}

/// Keys seen by a `unique` check: exact for one integer column (a compressed bitmap: ids are
/// mostly dense, and 10M of them take a few MiB instead of a 150 MiB hash table), else a
/// 128-bit hash of the key's row encoding (a false duplicate is astronomically unlikely).
enum Seen {
    Ints(roaring::RoaringTreemap),
    Hashed(hashbrown::HashSet<u128>),
}

/// An `i64` as a `u64` in the same order.
fn ordered(key: i64) -> u64 {
    (key as u64) ^ (1 << 63)
}

/// One batch after the checks.
pub struct Checked {
    /// The rows that go on to the commit.
    pub kept: RecordBatch,
    /// The rows that go to the quarantine, and the rules each broke.
    pub quarantined: Option<(RecordBatch, Vec<String>)>,
}

impl Checks {
    /// The checks of `expectations`, `None` when there are none. `lookup` reads the values of a
    /// `relationships` target (`<layer>.<table>`, column).
    pub async fn new<F, Fut>(
        table: &str,
        expectations: &[Expectation],
        sample_columns: Vec<String>,
        lookup: F,
    ) -> Result<Option<Checks>>
    where
        F: Fn(String, String) -> Fut,
        Fut: std::future::Future<Output = Result<HashSet<String>>>,
    {
        if expectations.is_empty() {
            return Ok(None);
        }
        let mut kinds = Vec::new();
        let mut relations = Vec::new();
        for expectation in expectations {
            let kind = expectation.kind().map_err(|message| EngineError::Expectation {
                table: table.to_owned(),
                name: expectation.name.clone(),
                message,
            })?;
            relations.push(match &kind {
                Kind::Relationships { table: target, to_column, .. } => {
                    Some(Arc::new(lookup(target.clone(), to_column.clone()).await?))
                }
                _ => None,
            });
            kinds.push(kind);
        }
        let unique = kinds
            .iter()
            .map(|k| matches!(k, Kind::Unique { .. }).then(|| Seen::Ints(roaring::RoaringTreemap::new())))
            .collect();
        Ok(Some(Checks {
            table: table.to_owned(),
            names: expectations.iter().map(|e| e.name.clone()).collect(),
            actions: expectations.iter().map(|e| e.on_violation).collect(),
            kinds,
            sample_columns,
            relations,
            compiled: Mutex::new(Vec::new()),
            held: Mutex::new(Vec::new()),
            state: Mutex::new(State {
                gate: Gate::new(expectations.to_vec()),
                unique,
                latest: vec![None; expectations.len()],
            }),
        }))
    }

    fn error(&self, index: usize, message: impl std::fmt::Display) -> EngineError {
        EngineError::Expectation {
            table: self.table.clone(),
            name: self.names.get(index).cloned().unwrap_or_default(),
            message: message.to_string(),
        }
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, State>> {
        self.state.lock().map_err(|_| EngineError::Internal(format!("expectations of `{}`: lock poisoned", self.table)))
    }

    /// The row checks compiled for `schema` (cached: a schema changes only when columns are added).
    fn compiled(&self, schema: &SchemaRef) -> Result<Arc<Compiled>> {
        let poisoned = || EngineError::Internal(format!("expectations of `{}`: lock poisoned", self.table));
        if let Some((_, compiled)) = self.compiled.lock().map_err(|_| poisoned())?.iter().find(|(s, _)| s == schema) {
            return Ok(compiled.clone());
        }
        let context = SessionContext::new();
        let df_schema = DFSchema::try_from(schema.as_ref().clone()).map_err(|e| self.error(0, e))?;
        let simplifier =
            ExprSimplifier::new(SimplifyContext::builder().with_schema(Arc::new(df_schema.clone())).build());
        let mut compiled = Vec::with_capacity(self.kinds.len());
        for (index, kind) in self.kinds.iter().enumerate() {
            compiled.push(match kind {
                Kind::Row { pass_sql } => {
                    let expr = context.parse_sql_expr(pass_sql, &df_schema).map_err(|e| self.error(index, e))?;
                    // Physical planning takes simplified expressions (e.g. COALESCE becomes CASE).
                    let expr = simplifier.simplify(expr).map_err(|e| self.error(index, e))?;
                    Some(context.create_physical_expr(expr, &df_schema).map_err(|e| self.error(index, e))?)
                }
                _ => None,
            });
        }
        let compiled = Arc::new(compiled);
        self.compiled.lock().map_err(|_| poisoned())?.push((schema.clone(), compiled.clone()));
        Ok(compiled)
    }

    /// Checks one batch: what is kept, what goes to the quarantine.
    pub fn apply(&self, batch: &RecordBatch) -> Result<Checked> {
        let rows = batch.num_rows();
        let compiled = self.compiled(&batch.schema())?;
        // Masks that need no state, computed outside the lock.
        let mut masks: Vec<Option<BooleanArray>> = Vec::with_capacity(self.kinds.len());
        let mut unique_keys: Vec<Option<Keys>> = Vec::with_capacity(self.kinds.len());
        let mut latest: Vec<Option<i64>> = vec![None; self.kinds.len()];
        for (index, kind) in self.kinds.iter().enumerate() {
            let mut keys = None;
            let mask = match (kind, &compiled[index]) {
                (Kind::Row { .. }, Some(expr)) => {
                    let pass =
                        expr.evaluate(batch).and_then(|v| v.into_array(rows)).map_err(|e| self.error(index, e))?;
                    let pass = pass
                        .as_any()
                        .downcast_ref::<BooleanArray>()
                        .ok_or_else(|| self.error(index, format!("is {}, not a boolean", pass.data_type())))?;
                    // NULL is no pass.
                    let pass = if pass.null_count() == 0 { pass.clone() } else { prep_null_mask_filter(pass) };
                    Some(not(&pass).map_err(|e| self.error(index, e))?)
                }
                (Kind::Unique { columns }, _) => {
                    keys = Some(self.keys(index, batch, columns)?);
                    None
                }
                (Kind::Relationships { column, .. }, _) => {
                    let values = self.text_column(index, batch, column)?;
                    let known = self.relations[index].as_deref();
                    Some(
                        (0..rows)
                            .map(|r| Some(values.is_valid(r) && known.is_none_or(|k| !k.contains(values.value(r)))))
                            .collect(),
                    )
                }
                (Kind::Freshness { column, .. }, _) => {
                    latest[index] = self.latest_micros(index, batch, column)?;
                    None
                }
                _ => None,
            };
            masks.push(mask);
            unique_keys.push(keys);
        }
        // Rows another rule removes are not this commit's: their keys are not seen.
        let mut removed: Option<BooleanArray> = None;
        for (index, mask) in masks.iter().enumerate() {
            let removes =
                matches!(self.actions[index], inlet_quality::Action::Drop | inlet_quality::Action::Quarantine);
            if let (true, Some(mask)) = (removes, mask) {
                removed = Some(match removed {
                    None => mask.clone(),
                    Some(so_far) => or(&so_far, mask).map_err(|e| self.error(index, e))?,
                });
            }
        }
        let mut state = self.lock()?;
        for (index, keys) in unique_keys.into_iter().enumerate() {
            let (Some(keys), Some(seen)) = (keys, state.unique[index].as_mut()) else { continue };
            masks[index] = Some(seen.insert(keys, removed.as_ref()));
        }
        for (index, value) in latest.into_iter().enumerate() {
            if let Some(value) = value {
                state.latest[index] = state.latest[index].max(Some(value));
            }
        }
        // Row-set checks that see no rows still count them (`None` = commit-level).
        let observed: Vec<Option<BooleanArray>> = self
            .kinds
            .iter()
            .zip(masks)
            .map(|(kind, mask)| match kind {
                Kind::RowCount { .. } | Kind::Freshness { .. } => None,
                _ => Some(mask.unwrap_or_else(|| BooleanArray::from(vec![false; rows]))),
            })
            .collect();
        let key = |row: usize| self.sample(batch, row);
        let decision = state.gate.observe(rows, &observed, &key);
        drop(state);
        let kept = if decision.keep.true_count() == rows {
            batch.clone()
        } else {
            filter_record_batch(batch, &decision.keep).map_err(|e| EngineError::arrow("dropping rows", e))?
        };
        let quarantined = if decision.quarantine.is_empty() {
            None
        } else {
            let indices: UInt32Array = decision.quarantine.iter().map(|(row, _)| *row as u32).collect();
            let rules: Vec<String> = decision.quarantine.into_iter().map(|(_, rules)| rules).collect();
            let rows = take_record_batch(batch, &indices).map_err(|e| EngineError::arrow("quarantining rows", e))?;
            Some((rows, rules))
        };
        Ok(Checked { kept, quarantined })
    }

    /// Checks one batch and returns the rows kept; quarantined rows are held until
    /// [`Checks::take_quarantined`].
    pub fn keep(&self, batch: &RecordBatch) -> Result<RecordBatch> {
        let checked = self.apply(batch)?;
        if let Some(quarantined) = checked.quarantined {
            self.held
                .lock()
                .map_err(|_| EngineError::Internal(format!("expectations of `{}`: lock poisoned", self.table)))?
                .push(quarantined);
        }
        Ok(checked.kept)
    }

    /// The rows held by [`Checks::keep`], and the rules each broke.
    pub fn take_quarantined(&self) -> Result<Vec<(RecordBatch, Vec<String>)>> {
        let mut held = self
            .held
            .lock()
            .map_err(|_| EngineError::Internal(format!("expectations of `{}`: lock poisoned", self.table)))?;
        Ok(std::mem::take(&mut *held))
    }

    /// Concludes the whole-commit checks and reports every expectation.
    pub fn finish(&self, now_micros: i64) -> Result<GateReport> {
        let mut state = self.lock()?;
        let kept = state.gate.rows_kept();
        for (index, kind) in self.kinds.iter().enumerate() {
            match kind {
                Kind::RowCount { min, max } => {
                    let rows = i64::try_from(kept).unwrap_or(i64::MAX);
                    let verdict = match (min, max) {
                        (Some(min), _) if rows < *min => Err(format!("{rows} rows, fewer than {min}")),
                        (_, Some(max)) if rows > *max => Err(format!("{rows} rows, more than {max}")),
                        _ => Ok(()),
                    };
                    state.gate.conclude(index, verdict);
                }
                Kind::Freshness { column, max_age_secs } => {
                    let limit = i64::try_from(*max_age_secs).unwrap_or(i64::MAX).saturating_mul(1_000_000);
                    let verdict = match state.latest[index] {
                        None => Err(format!("no `{column}` value to tell the age")),
                        Some(latest) if now_micros.saturating_sub(latest) > limit => Err(format!(
                            "latest `{column}` is {}s old, more than {max_age_secs}s",
                            now_micros.saturating_sub(latest) / 1_000_000
                        )),
                        Some(_) => Ok(()),
                    };
                    state.gate.conclude(index, verdict);
                }
                _ => {}
            }
        }
        Ok(state.gate.finish())
    }

    /// The gate's report, or the error that stops the commit when it failed.
    pub fn verdict(&self, now_micros: i64) -> Result<GateReport> {
        let report = self.finish(now_micros)?;
        if report.outcome == Outcome::Failed {
            return Err(EngineError::GateFailed {
                table: self.table.clone(),
                summary: report.summary(),
                report: Box::new(report),
            });
        }
        Ok(report)
    }

    fn column<'a>(&self, index: usize, batch: &'a RecordBatch, column: &str) -> Result<&'a ArrayRef> {
        batch.column_by_name(column).ok_or_else(|| self.error(index, format!("no column `{column}`")))
    }

    fn text_column(&self, index: usize, batch: &RecordBatch, column: &str) -> Result<StringArray> {
        let values = cast(self.column(index, batch, column)?, &DataType::Utf8).map_err(|e| self.error(index, e))?;
        values
            .as_any()
            .downcast_ref::<StringArray>()
            .cloned()
            .ok_or_else(|| EngineError::Internal("a cast to text is not text".into()))
    }

    fn latest_micros(&self, index: usize, batch: &RecordBatch, column: &str) -> Result<Option<i64>> {
        let values = self.column(index, batch, column)?;
        let values = cast(values, &DataType::Timestamp(TimeUnit::Microsecond, None))
            .map_err(|e| self.error(index, format!("`{column}` is not a time: {e}")))?;
        let values = cast(&values, &DataType::Int64).map_err(|e| self.error(index, e))?;
        let values = values
            .as_any()
            .downcast_ref::<Int64Array>()
            .ok_or_else(|| EngineError::Internal("a cast to bigint is not bigint".into()))?;
        Ok(arrow::compute::max(values))
    }

    /// The `unique` keys of a batch; rows with a NULL key part are not compared.
    fn keys(&self, index: usize, batch: &RecordBatch, columns: &[String]) -> Result<Keys> {
        let arrays: Vec<ArrayRef> =
            columns.iter().map(|c| self.column(index, batch, c).cloned()).collect::<Result<_>>()?;
        let rows = batch.num_rows();
        let present: Vec<bool> = (0..rows).map(|r| arrays.iter().all(|a| a.is_valid(r))).collect();
        if let [single] = arrays.as_slice()
            && let Some(ints) = single.as_any().downcast_ref::<Int64Array>()
        {
            return Ok(Keys::Ints((0..rows).map(|r| present[r].then(|| ints.value(r))).collect()));
        }
        let fields: Vec<SortField> = arrays.iter().map(|a| SortField::new(a.data_type().clone())).collect();
        let converter = RowConverter::new(fields).map_err(|e| self.error(index, e))?;
        let encoded = converter.convert_columns(&arrays).map_err(|e| self.error(index, e))?;
        Ok(Keys::Hashed((0..rows).map(|r| present[r].then(|| hash128(encoded.row(r).as_ref()))).collect()))
    }

    /// `k=v, ...` of the sample columns (every column when none are set or present).
    fn sample(&self, batch: &RecordBatch, row: usize) -> String {
        let schema = batch.schema();
        let mut chosen: Vec<usize> =
            self.sample_columns.iter().filter_map(|c| schema.index_of(c).ok()).collect::<Vec<_>>();
        if chosen.is_empty() {
            chosen = (0..schema.fields().len()).collect();
        }
        let options = FormatOptions::default().with_null("NULL");
        let parts: Vec<String> = chosen
            .iter()
            .map(|&i| {
                let value = ArrayFormatter::try_new(batch.column(i).as_ref(), &options)
                    .map(|f| f.value(row).to_string())
                    .unwrap_or_default();
                format!("{}={value}", schema.field(i).name())
            })
            .collect();
        let mut text = parts.join(", ");
        if text.len() > 200 {
            let cut = (0..=200).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
            text.truncate(cut);
            text.push('…');
        }
        text
    }
}

enum Keys {
    Ints(Vec<Option<i64>>),
    Hashed(Vec<Option<u128>>),
}

impl Seen {
    /// Records a batch's keys; `true` for a key seen before (earlier in this batch or commit).
    /// Rows `skip`ped (removed by another rule) are neither recorded nor flagged.
    fn insert(&mut self, keys: Keys, skip: Option<&BooleanArray>) -> BooleanArray {
        let skipped = |row: usize| skip.is_some_and(|s| s.is_valid(row) && s.value(row));
        let keys = match keys {
            Keys::Ints(keys) => {
                Keys::Ints(keys.into_iter().enumerate().map(|(row, k)| k.filter(|_| !skipped(row))).collect())
            }
            Keys::Hashed(keys) => {
                Keys::Hashed(keys.into_iter().enumerate().map(|(row, k)| k.filter(|_| !skipped(row))).collect())
            }
        };
        let mut mask = BooleanBuilder::new();
        match (self, keys) {
            (Seen::Ints(seen), Keys::Ints(keys)) => {
                for key in keys {
                    mask.append_value(key.is_some_and(|k| !seen.insert(ordered(k))));
                }
            }
            (seen @ Seen::Ints(_), Keys::Hashed(keys)) => {
                // The key columns changed type mid-commit: compare hashes from here on, the
                // integers seen so far included.
                let ints = match seen {
                    Seen::Ints(ints) => std::mem::take(ints),
                    Seen::Hashed(_) => roaring::RoaringTreemap::new(),
                };
                *seen = Seen::Hashed(ints.iter().map(|k| u128::from(k) | (1 << 127)).collect());
                return seen.insert(Keys::Hashed(keys), None);
            }
            (Seen::Hashed(seen), Keys::Hashed(keys)) => {
                for key in keys {
                    mask.append_value(key.is_some_and(|k| !seen.insert(k)));
                }
            }
            (Seen::Hashed(seen), Keys::Ints(keys)) => {
                for key in keys {
                    mask.append_value(key.is_some_and(|k| !seen.insert(u128::from(ordered(k)) | (1 << 127))));
                }
            }
        }
        mask.finish()
    }
}

fn hash128(bytes: &[u8]) -> u128 {
    let half = |seed: u64| {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        seed.hash(&mut hasher);
        bytes.hash(&mut hasher);
        hasher.finish()
    };
    (u128::from(half(0x9e37_79b9_7f4a_7c15)) << 64) | u128::from(half(0xc2b2_ae3d_27d4_eb4f))
}

/// The checks of a table's expectations, `relationships` targets read from `lake`; samples
/// show `sample_columns`.
pub async fn checks_for(
    table: &str,
    expectations: &[Expectation],
    sample_columns: Vec<String>,
    lake: &url::Url,
) -> Result<Option<Arc<Checks>>> {
    let checks = Checks::new(table, expectations, sample_columns, |target: String, column: String| async move {
        let name = crate::config::TableName::parse(&target)
            .ok_or_else(|| EngineError::Internal(format!("unvalidated table name `{target}`")))?;
        let table = crate::table::Table::open(&target, crate::table::table_url(lake, &name)?).await?;
        table.column_text_values(&column).await
    })
    .await?;
    Ok(checks.map(Arc::new))
}

/// The commit metadata key of the quality gate's report.
pub const QUALITY_KEY: &str = "inlet_quality";

/// Commit metadata with the gate's report (`inlet_quality`) and a `userMetadata` line for
/// `DESCRIBE HISTORY`: `summary`, then the gate's summary.
pub(crate) fn quality_metadata(
    mut metadata: std::collections::HashMap<String, serde_json::Value>,
    quality: Option<&GateReport>,
    summary: String,
) -> Result<std::collections::HashMap<String, serde_json::Value>> {
    let mut line = summary;
    if let Some(report) = quality {
        let json =
            serde_json::to_value(report).map_err(|e| EngineError::Internal(format!("serialising quality: {e}")))?;
        metadata.insert(QUALITY_KEY.to_owned(), json);
        line = format!("{line}; {}", report.summary());
    }
    metadata.insert("userMetadata".to_owned(), serde_json::Value::String(line));
    Ok(metadata)
}

/// Quarantine rows for rows that broke expectations: the foundation's quarantine columns,
/// `_error_code = "expectation"`, the rules in `_error_rule`, the row as JSON in `_raw_record`.
/// `_source_file` and `_source_row` come from the rows when they have them (bronze), else
/// `origin` names where they came from.
pub fn quarantine_rows(
    rows: &RecordBatch,
    rules: &[String],
    origin: &str,
    load_id: &str,
    ingested_at_micros: i64,
    bronze: bool,
) -> Result<RecordBatch> {
    let n = rows.num_rows();
    // A bronze row names its unit: a file, or the URL of a request.
    let file: ArrayRef = match rows.column_by_name(SOURCE_FILE).or_else(|| rows.column_by_name(SOURCE_URL)) {
        Some(files) => cast(files, &DataType::Utf8).map_err(|e| EngineError::arrow("quarantine rows", e))?,
        None => Arc::new(crate::conform::repeated(origin, n)),
    };
    let file = match file.null_count() {
        0 => file,
        _ => {
            let text =
                file.as_any().downcast_ref::<StringArray>().cloned().unwrap_or_else(|| StringArray::from(vec![""; n]));
            Arc::new(text.iter().map(|f| Some(f.unwrap_or(origin).to_owned())).collect::<StringArray>()) as ArrayRef
        }
    };
    let row: ArrayRef = match rows.column_by_name(SOURCE_ROW) {
        Some(row) => cast(row, &DataType::Int64).map_err(|e| EngineError::arrow("quarantine rows", e))?,
        None => Arc::new(Int64Array::new_null(n)),
    };
    // The row's own columns as JSON: a bronze row's without the metadata inlet adds (a
    // replay adds it again); a derived row's all of them.
    let data_columns: Vec<usize> = rows
        .schema()
        .fields()
        .iter()
        .enumerate()
        .filter(|(_, f)| !(bronze && crate::schema::is_metadata_column(f.name())))
        .map(|(i, _)| i)
        .collect();
    let data = rows.project(&data_columns).map_err(|e| EngineError::arrow("quarantine rows", e))?;
    let mut json = Vec::new();
    {
        let mut writer = arrow_json::LineDelimitedWriter::new(&mut json);
        writer.write(&data).map_err(|e| EngineError::arrow("quarantine rows as JSON", e))?;
        writer.finish().map_err(|e| EngineError::arrow("quarantine rows as JSON", e))?;
    }
    let text = String::from_utf8_lossy(&json);
    let records: Vec<&str> = text.lines().collect();
    let messages: Vec<String> = rules.iter().map(|r| format!("broke expectation {r}")).collect();
    let columns: Vec<ArrayRef> = vec![
        file,
        row,
        Arc::new(crate::conform::repeated(EXPECTATION_ERROR_CODE, n)),
        Arc::new(StringArray::from_iter_values(messages.iter())),
        Arc::new(StringArray::from_iter((0..n).map(|i| records.get(i).copied()))),
        Arc::new(crate::conform::repeated(load_id, n)),
        Arc::new(
            arrow::array::TimestampMicrosecondArray::from_iter_values(std::iter::repeat_n(ingested_at_micros, n))
                .with_timezone("UTC"),
        ),
        Arc::new(StringArray::from_iter_values(rules.iter())),
        Arc::new(Int64Array::new_null(n)),
    ];
    RecordBatch::try_new(crate::schema::quarantine_schema(), columns)
        .map_err(|e| EngineError::arrow("assembling quarantine rows", e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::{Field, Schema};
    use inlet_quality::{Action, Check};

    fn expectation(name: &str) -> Expectation {
        Expectation { on_violation: Action::Warn, ..Expectation::named(name) }
    }

    fn batch(ids: Vec<Option<i64>>, amounts: Vec<Option<i64>>, status: Vec<Option<&str>>) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("amount", DataType::Int64, true),
            Field::new("status", DataType::Utf8, true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(ids)),
                Arc::new(Int64Array::from(amounts)),
                Arc::new(StringArray::from(status)),
            ],
        )
        .unwrap()
    }

    async fn checks(expectations: Vec<Expectation>) -> Checks {
        Checks::new("silver.t", &expectations, vec!["id".into()], |_, _| async {
            Ok(HashSet::from(["1".to_owned(), "2".to_owned()]))
        })
        .await
        .unwrap()
        .unwrap()
    }

    #[tokio::test]
    async fn row_rules_drop_and_quarantine_and_unique_spans_batches() {
        let checks = checks(vec![
            Expectation { rule: Some("amount >= 0".into()), on_violation: Action::Drop, ..expectation("non_negative") },
            Expectation {
                check: Some(Check::AcceptedValues),
                column: Some("status".into()),
                values: vec![inlet_quality::expect::Literal::Text("new".into())],
                on_violation: Action::Quarantine,
                ..expectation("status")
            },
            Expectation { check: Some(Check::Unique), columns: vec!["id".into()], ..expectation("id_unique") },
        ])
        .await;
        let first = checks
            .apply(&batch(
                vec![Some(1), Some(2), Some(3)],
                vec![Some(5), Some(-1), None],
                vec![Some("new"), Some("new"), Some("old")],
            ))
            .unwrap();
        // Row 2 is dropped (negative), row 3 is quarantined (status) and NULL amount is a violation too.
        assert_eq!(first.kept.num_rows(), 1);
        let (quarantined, rules) = first.quarantined.unwrap();
        assert_eq!(quarantined.num_rows(), 1);
        assert_eq!(rules, vec!["status".to_owned()]);
        let second = checks.apply(&batch(vec![Some(1), None, None], vec![Some(1); 3], vec![None; 3])).unwrap();
        assert_eq!(second.kept.num_rows(), 3, "warn keeps the duplicate; NULL keys are not compared");
        let report = checks.finish(0).unwrap();
        let unique = report.expectations.iter().find(|e| e.name == "id_unique").unwrap();
        assert_eq!((unique.rows_checked, unique.failed), (6, 1));
        assert_eq!(unique.sample_keys, vec!["id=1".to_owned()]);
        let dropped = report.expectations.iter().find(|e| e.name == "non_negative").unwrap();
        assert_eq!((dropped.failed, dropped.dropped), (2, 1), "the NULL row was quarantined, not dropped");
        assert_eq!(report.outcome, Outcome::Warned);
    }

    #[tokio::test]
    async fn commit_checks_relationships_and_bad_rules() {
        let checks = checks(vec![
            Expectation {
                check: Some(Check::RowCount),
                min: Some(inlet_quality::expect::Literal::Int(5)),
                on_violation: Action::Fail,
                ..expectation("enough")
            },
            Expectation {
                check: Some(Check::Relationships),
                column: Some("id".into()),
                to: Some("silver.other.id".into()),
                ..expectation("known")
            },
        ])
        .await;
        checks.apply(&batch(vec![Some(1), Some(7)], vec![None; 2], vec![None; 2])).unwrap();
        let err = checks.verdict(0).unwrap_err();
        let EngineError::GateFailed { report, summary, .. } = err else { panic!("not a gate failure: {err}") };
        assert!(summary.contains("2 rows, fewer than 5"), "{summary}");
        assert_eq!(report.expectations[1].failed, 1);
        assert_eq!(report.expectations[1].sample_keys, vec!["id=7".to_owned()]);

        let bad = checks_with_rule("no_such_column > 1").await;
        let err = bad.apply(&batch(vec![Some(1)], vec![None], vec![None])).err().unwrap();
        assert!(err.to_string().contains("expectation `bad`"), "{err}");
    }

    #[tokio::test]
    async fn regex_and_freshness() {
        let checks = checks(vec![
            Expectation {
                check: Some(Check::Regex),
                column: Some("status".into()),
                pattern: Some("^[a-z]+$".into()),
                ..expectation("lowercase")
            },
            Expectation {
                check: Some(Check::Freshness),
                column: Some("amount".into()),
                max_age_secs: Some(10),
                on_violation: Action::Fail,
                ..expectation("fresh")
            },
        ])
        .await;
        // `amount` as microseconds since the epoch: the latest is 5 s old at "now" = 15 s.
        checks
            .apply(&batch(
                vec![Some(1), Some(2), Some(3)],
                vec![Some(1_000_000), Some(10_000_000), None],
                vec![Some("ok"), Some("NO"), None],
            ))
            .unwrap();
        let report = checks.finish(15_000_000).unwrap();
        assert_eq!((report.expectations[0].failed, report.expectations[0].passed), (1, 2), "NULL passes a regex");
        assert_eq!(report.expectations[0].sample_keys, vec!["id=2".to_owned()]);
        assert_eq!(report.expectations[1].outcome, Outcome::Passed);
        let stale = checks.finish(30_000_000).unwrap();
        assert_eq!(stale.expectations[1].outcome, Outcome::Failed);
        assert!(stale.expectations[1].detail.as_deref().unwrap().contains("20s old"), "{stale:?}");
    }

    #[tokio::test]
    async fn unique_ignores_rows_another_rule_removes() {
        let checks = checks(vec![
            Expectation {
                rule: Some("amount >= 0".into()),
                on_violation: Action::Quarantine,
                ..expectation("positive")
            },
            Expectation {
                check: Some(Check::Unique),
                columns: vec!["id".into()],
                on_violation: Action::Drop,
                ..expectation("unique")
            },
        ])
        .await;
        let checked = checks.apply(&batch(vec![Some(7), Some(7)], vec![Some(-5), Some(10)], vec![None, None])).unwrap();
        assert_eq!(checked.kept.num_rows(), 1, "the valid row is not a duplicate of the quarantined one");
        assert_eq!(checked.quarantined.unwrap().0.num_rows(), 1);
    }

    async fn checks_with_rule(rule: &str) -> Checks {
        checks(vec![Expectation { rule: Some(rule.into()), ..expectation("bad") }]).await
    }

    #[test]
    fn quarantine_rows_keep_the_row_as_json() {
        let rows = batch(vec![Some(1)], vec![Some(-5)], vec![Some("x")]);
        let quarantined = quarantine_rows(&rows, &["non_negative".into()], "silver.t", "run-1", 7, false).unwrap();
        let record = quarantined.column(4).as_any().downcast_ref::<StringArray>().unwrap().value(0).to_owned();
        assert_eq!(record, r#"{"id":1,"amount":-5,"status":"x"}"#);
        let file = quarantined.column(0).as_any().downcast_ref::<StringArray>().unwrap().value(0).to_owned();
        assert_eq!(file, "silver.t");
    }
}
