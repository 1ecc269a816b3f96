//! `merge`: upsert by key. The result's rows are deduplicated by key (latest by
//! `sequence_by`), joined against the table's files whose key range overlaps them, and only
//! the files holding changed keys are rewritten; on a table with deletion vectors, those
//! rows are marked deleted instead ([`super::mark`]).

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use deltalake::datafusion::common::{Column, ScalarValue};
use deltalake::datafusion::prelude::{DataFrame, Expr, SessionContext, lit};
use tracing::debug;

use crate::error::Result;
use crate::table::CommitKind;

use std::time::Instant;

use super::write::{Planned, Writer, Written, describe_rows, first_count, op_counts, removes_for};
use super::{CHANGE_TYPE, DELETE_COLUMN, FILE_COLUMN, OP_COLUMN, RowCounts, quote};

impl Writer<'_> {
    /// The result with `__inlet_delete` (from `delete_when`), one row per key: the latest by
    /// `sequence_by`; without it, a repeated key is an error naming it.
    pub(crate) async fn keyed_source(
        &self,
        context: &SessionContext,
        frame: DataFrame,
        schema: &SchemaRef,
    ) -> Result<DataFrame> {
        let batches = frame.collect().await.map_err(|e| self.sql_error(e))?;
        let batches = self.checked(batches, schema)?;
        self.register_result(context, batches, schema, false).await?;
        let keys: Vec<String> = self.config.keys.iter().map(|k| quote(k)).collect();
        let keys = keys.join(", ");
        self.check_null_keys(context).await?;
        if let Some(sequence) = &self.config.sequence_by {
            let nulls = self
                .query(context, &format!("SELECT COUNT(*) FROM __inlet_result WHERE {} IS NULL", quote(sequence)))
                .await?;
            let count = first_count(&nulls);
            if count > 0 {
                return Err(self.transform_error(format!(
                    "{count} result rows have a NULL `{sequence}`; without it the latest row cannot be told"
                )));
            }
        }
        let delete = self.delete_flag();
        let flagged = format!("SELECT *, {delete} AS {DELETE_COLUMN} FROM __inlet_result");
        // Most batches have one row per key: count first, sort only when needed.
        let distinct = self.query(context, &format!(
                "SELECT (SELECT COUNT(*) FROM __inlet_result) - (SELECT COUNT(*) FROM (SELECT {keys} FROM __inlet_result GROUP BY {keys}))"
            )).await?;
        let repeated = first_count(&distinct) > 0;
        if repeated && let Some(sequence) = &self.config.sequence_by {
            // Two different rows for one key at one instant: no latest to keep.
            let ties = self.query(context, &format!(
                    "SELECT {keys}, {s}, COUNT(*) AS n FROM (SELECT DISTINCT * FROM __inlet_result) GROUP BY {keys}, {s} HAVING COUNT(*) > 1 LIMIT 3",
                    s = quote(sequence)
                )).await?;
            if let Some(described) = describe_rows(&ties) {
                return Err(self.transform_error(format!(
                    "different rows for one key with the same `{sequence}` ({described}); the latest is ambiguous"
                )));
            }
        }
        let sql = match &self.config.sequence_by {
            Some(sequence) if repeated => format!(
                "SELECT * FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY {keys} ORDER BY {} DESC NULLS LAST) AS __inlet_rn FROM ({flagged})) WHERE __inlet_rn = 1",
                quote(sequence)
            ),
            _ if !repeated => flagged,
            _ => {
                let duplicates = self.query(context, &format!(
                        "SELECT {keys}, COUNT(*) AS n FROM __inlet_result GROUP BY {keys} HAVING COUNT(*) > 1 LIMIT 3"
                    )).await?;
                if let Some(described) = describe_rows(&duplicates) {
                    return Err(self.transform_error(format!(
                        "duplicate keys in the query result ({described}); set `sequence_by` to keep the latest"
                    )));
                }
                flagged
            }
        };
        let frame = context.sql(&sql).await.map_err(|e| self.sql_error(e))?;
        let frame = if self.config.sequence_by.is_some() && repeated {
            frame.drop_columns(&["__inlet_rn"]).map_err(|e| self.sql_error(e))?
        } else {
            frame
        };
        Ok(frame)
    }

    /// `merge`: upsert by key, latest by `sequence_by`, `delete_when` deletes.
    ///
    /// First the join of the (deduplicated) result against the table's keys, pruned to the
    /// files whose key range overlaps the result's, says what each result row does; then only
    /// the files holding updated or deleted keys are read again and rewritten without those
    /// keys, and the updated and new rows are written beside them.
    pub(super) async fn merge(&self, context: &SessionContext, frame: DataFrame) -> Result<Written> {
        self.check_partitioning()?;
        let (schema, changed) = self.plan_schema(frame.schema().as_arrow(), false)?;
        let started = Instant::now();
        let source = self.keyed_source(context, frame, &schema).await?;
        let source = source.cache().await.map_err(|e| self.sql_error(e))?;
        context.register_table("__inlet_src", source.into_view()).map_err(|e| self.sql_error(e))?;
        debug!(table = %self.table, elapsed_ms = started.elapsed().as_millis() as u64, "merge source ready");
        let keys = &self.config.keys;
        let on = |a: &str, b: &str| -> String {
            keys.iter().map(|k| format!("({a}.{k} = {b}.{k})", k = quote(k))).collect::<Vec<_>>().join(" AND ")
        };
        let columns: Vec<String> = schema.fields().iter().map(|f| quote(f.name())).collect();
        let source_columns = columns.iter().map(|c| format!("s.{c}")).collect::<Vec<_>>().join(", ");
        let predicate = on("target", "source");

        if !self.target.exists() {
            let sql = format!("SELECT {source_columns} FROM __inlet_src s WHERE NOT s.{DELETE_COLUMN}");
            let (inserted, adds) = self.write_sql(context, &sql, &schema).await?;
            let rows = RowCounts { inserted, ..RowCounts::default() };
            let commit = (!adds.is_empty()).then(|| Planned {
                adds,
                removes: Vec::new(),
                cdc: Vec::new(),
                schema: Some(schema.clone()),
                kind: CommitKind::Merge { predicate },
            });
            return Ok(Written { rows, commit });
        }

        let existing = self.target.arrow_schema()?.unwrap_or_else(|| schema.clone());
        let files = self.target.active_files().await?;
        let target = self.target.scan(None, Some(FILE_COLUMN)).await?;
        context.register_table("__inlet_tgt", target).map_err(|e| self.sql_error(e))?;
        self.register_candidates(context).await?;

        // Rows at the same instant update only when they differ, column by column; that compare
        // reads every column, so it runs second and only over the files holding such ties.
        let equal: Vec<String> = schema
            .fields()
            .iter()
            .map(|f| {
                let c = quote(f.name());
                if existing.field_with_name(f.name()).is_ok() {
                    format!("(t.{c} IS NOT DISTINCT FROM s.{c})")
                } else {
                    format!("(s.{c} IS NULL)")
                }
            })
            .collect();
        let equal = equal.join(" AND ");
        let key_columns = keys.iter().map(|k| format!("s.{}", quote(k))).collect::<Vec<_>>().join(", ");
        let classify = |late: &str, same: &str, target: &str| {
            format!(
                "SELECT t.{FILE_COLUMN} AS {FILE_COLUMN}, {key_columns}, CASE WHEN {late} THEN 'late' WHEN s.{DELETE_COLUMN} THEN 'delete' WHEN {same} ELSE 'update' END AS {OP_COLUMN} FROM __inlet_src s JOIN {target} t ON {on}",
                on = on("s", "t"),
            )
        };
        // The result (small) is the join's build side; the table is streamed. With
        // `sequence_by`, the first pass reads only keys, sequence and file.
        let matched = match &self.config.sequence_by {
            Some(sequence) => {
                let c = quote(sequence);
                let first = classify(&format!("s.{c} < t.{c}"), &format!("s.{c} = t.{c} THEN 'tie'"), "__inlet_cand");
                let first = context.sql(&first).await.map_err(|e| self.sql_error(e))?;
                let first = first.cache().await.map_err(|e| self.sql_error(e))?;
                context.register_table("__inlet_first", first.clone().into_view()).map_err(|e| self.sql_error(e))?;
                let tie_files = self
                    .strings(
                        context,
                        &format!("SELECT DISTINCT {FILE_COLUMN} FROM __inlet_first WHERE {OP_COLUMN} = 'tie'"),
                    )
                    .await?;
                if tie_files.is_empty() {
                    first
                } else {
                    let tied = self.target.scan(Some(tie_files), Some(FILE_COLUMN)).await?;
                    context.register_table("__inlet_tied", tied).map_err(|e| self.sql_error(e))?;
                    let resolved = format!(
                        "SELECT t.{FILE_COLUMN} AS {FILE_COLUMN}, {key_columns}, CASE WHEN {equal} THEN 'same' ELSE 'update' END AS {OP_COLUMN} FROM __inlet_src s JOIN __inlet_tied t ON {on} WHERE s.{c} = t.{c} AND NOT s.{DELETE_COLUMN}",
                        on = on("s", "t"),
                    );
                    let sql = format!("SELECT * FROM __inlet_first WHERE {OP_COLUMN} <> 'tie' UNION ALL {resolved}");
                    let resolved = context.sql(&sql).await.map_err(|e| self.sql_error(e))?;
                    resolved.cache().await.map_err(|e| self.sql_error(e))?
                }
            }
            None => {
                let sql = classify("false", &format!("{equal} THEN 'same'"), "__inlet_cand");
                let matched = context.sql(&sql).await.map_err(|e| self.sql_error(e))?;
                matched.cache().await.map_err(|e| self.sql_error(e))?
            }
        };
        context.register_table("__inlet_matched", matched.into_view()).map_err(|e| self.sql_error(e))?;
        debug!(table = %self.table, elapsed_ms = started.elapsed().as_millis() as u64, "merge matched");

        let counts = self
            .query(context, &format!("SELECT {OP_COLUMN}, COUNT(*) FROM __inlet_matched GROUP BY {OP_COLUMN}"))
            .await?;
        let counts = op_counts(&counts);
        let touched = self
            .strings(
                context,
                &format!(
                    "SELECT DISTINCT {FILE_COLUMN} FROM __inlet_matched WHERE {OP_COLUMN} IN ('update', 'delete')"
                ),
            )
            .await?;
        let mut adds = Vec::new();
        let marks_rows = self.marks_rows();
        let removes = if touched.is_empty() {
            Vec::new()
        } else if marks_rows {
            // The replaced rows marked deleted where they are; their files stay.
            let (marked, removes) = self.mark_replaced(context, &files).await?;
            adds.extend(marked);
            debug!(table = %self.table, elapsed_ms = started.elapsed().as_millis() as u64, "merge rows marked deleted");
            removes
        } else {
            removes_for(self.target, &files, &touched)?
        };

        // Without rewritten rows, the adds are the inserts: change data needs no files of its own.
        let mut cdc = Vec::new();
        // Rows kept from touched files are written again unless they stay where they are;
        // change data records the replaced rows either way.
        let rewrite = !removes.is_empty() && !marks_rows;
        let record = !removes.is_empty() && self.target.change_data_feed();
        if rewrite || record {
            // Only the touched files, read again, minus the changed keys.
            let touched_files = self.target.scan(Some(touched.clone()), None).await?;
            context.register_table("__inlet_rewrite", touched_files).map_err(|e| self.sql_error(e))?;
            let target_columns: Vec<String> = schema
                .fields()
                .iter()
                .map(|f| {
                    let c = quote(f.name());
                    if existing.field_with_name(f.name()).is_ok() { format!("t.{c}") } else { format!("NULL AS {c}") }
                })
                .collect();
            if rewrite {
                let kept = format!(
                    "SELECT {} FROM (SELECT {} FROM __inlet_matched WHERE {OP_COLUMN} IN ('update', 'delete')) m RIGHT ANTI JOIN __inlet_rewrite t ON {}",
                    target_columns.join(", "),
                    keys.iter().map(|k| quote(k)).collect::<Vec<_>>().join(", "),
                    on("m", "t"),
                );
                adds.extend(self.write_sql(context, &kept, &schema).await?.1);
                debug!(table = %self.table, elapsed_ms = started.elapsed().as_millis() as u64, "merge kept rows written");
            }
            if record {
                let changes = format!(
                    "SELECT {}, CASE WHEN m.{OP_COLUMN} = 'update' THEN 'update_preimage' ELSE 'delete' END AS {CHANGE_TYPE} FROM (SELECT {}, {OP_COLUMN} FROM __inlet_matched WHERE {OP_COLUMN} IN ('update', 'delete')) m JOIN __inlet_rewrite t ON {} \
                     UNION ALL SELECT {source_columns}, CASE WHEN m.{OP_COLUMN} = 'update' THEN 'update_postimage' ELSE 'insert' END FROM __inlet_src s LEFT JOIN __inlet_matched m ON {} WHERE (m.{OP_COLUMN} IS NULL AND NOT s.{DELETE_COLUMN}) OR m.{OP_COLUMN} = 'update'",
                    target_columns.join(", "),
                    keys.iter().map(|k| quote(k)).collect::<Vec<_>>().join(", "),
                    on("m", "t"),
                    on("m", "s"),
                );
                cdc = self.write_changes(context, &changes, &schema).await?;
            }
        }
        let upserts = format!(
            "SELECT {source_columns} FROM __inlet_src s LEFT JOIN __inlet_matched m ON {} WHERE (m.{OP_COLUMN} IS NULL AND NOT s.{DELETE_COLUMN}) OR m.{OP_COLUMN} = 'update'",
            on("m", "s"),
        );
        let (upserted, upsert_adds) = self.write_sql(context, &upserts, &schema).await?;
        adds.extend(upsert_adds);
        debug!(table = %self.table, elapsed_ms = started.elapsed().as_millis() as u64, "merge upserts written");
        let updated = counts.get("update").copied().unwrap_or(0);
        let rows = RowCounts {
            inserted: upserted.saturating_sub(updated),
            updated,
            deleted: counts.get("delete").copied().unwrap_or(0),
            unchanged: counts.get("same").copied().unwrap_or(0) + counts.get("late").copied().unwrap_or(0),
        };
        if rows.inserted == 0 && rows.updated == 0 && rows.deleted == 0 && !changed {
            return Ok(Written { rows, commit: None });
        }
        let commit = Planned {
            adds,
            removes,
            cdc,
            schema: changed.then_some(schema.clone()),
            kind: CommitKind::Merge { predicate },
        };
        Ok(Written { rows, commit: Some(commit) })
    }

    /// `__inlet_cand`: the table's rows that may match the result: with one key column, only
    /// those within the result's key range, so Delta statistics skip the other files.
    pub(crate) async fn register_candidates(&self, context: &SessionContext) -> Result<()> {
        let target = context.table("__inlet_tgt").await.map_err(|e| self.sql_error(e))?;
        let candidates = match self.config.keys.as_slice() {
            [key] => {
                let bounds =
                    self.query(context, &format!("SELECT MIN({k}), MAX({k}) FROM __inlet_src", k = quote(key))).await?;
                match bounds.iter().find(|b| b.num_rows() > 0) {
                    Some(batch) => {
                        let low = ScalarValue::try_from_array(batch.column(0), 0).map_err(|e| self.sql_error(e))?;
                        let high = ScalarValue::try_from_array(batch.column(1), 0).map_err(|e| self.sql_error(e))?;
                        let column = Expr::Column(Column::from_name(key.clone()));
                        target.filter(column.between(lit(low), lit(high))).map_err(|e| self.sql_error(e))?
                    }
                    None => target,
                }
            }
            _ => target,
        };
        context.register_table("__inlet_cand", candidates.into_view()).map_err(|e| self.sql_error(e))?;
        Ok(())
    }

    /// `scd2`: history rows with `_valid_from`, `_valid_to`, `_is_current`, `_row_hash`.
    pub(super) async fn scd2(&self, context: &SessionContext, frame: DataFrame) -> Result<Written> {
        super::scd2::write(self, context, frame, self.now_micros).await
    }

    /// The result with `__inlet_delete`, without exact duplicate rows, for writes that keep
    /// every version of a key; two different rows for one key and sequence are an error.
    pub(crate) async fn keyed_source_unique(
        &self,
        context: &SessionContext,
        frame: DataFrame,
        schema: &SchemaRef,
    ) -> Result<Vec<RecordBatch>> {
        let batches = frame.collect().await.map_err(|e| self.sql_error(e))?;
        let batches = self.checked(batches, schema)?;
        self.register_result(context, batches, schema, true).await?;
        self.check_null_keys(context).await?;
        let mut key_and_time: Vec<String> = self.config.keys.iter().map(|k| quote(k)).collect();
        if let Some(sequence) = &self.config.sequence_by {
            key_and_time.push(quote(sequence));
        }
        let key_and_time = key_and_time.join(", ");
        // Usually one row per key and instant: then there is nothing to deduplicate.
        let extra = self.query(context, &format!(
                "SELECT (SELECT COUNT(*) FROM __inlet_result) - (SELECT COUNT(*) FROM (SELECT {key_and_time} FROM __inlet_result GROUP BY {key_and_time}))"
            )).await?;
        let delete = self.delete_flag();
        if first_count(&extra) == 0 {
            return self.query(context, &format!("SELECT *, {delete} AS {DELETE_COLUMN} FROM __inlet_result")).await;
        }
        let duplicates = self.query(context, &format!(
                "SELECT {key_and_time}, COUNT(*) AS n FROM (SELECT DISTINCT * FROM __inlet_result) GROUP BY {key_and_time} HAVING COUNT(*) > 1 LIMIT 3"
            )).await?;
        if let Some(described) = describe_rows(&duplicates) {
            return Err(self.transform_error(format!(
                "different rows for one key at one valid time ({described}); history needs one version per instant"
            )));
        }
        self.query(
            context,
            &format!("SELECT *, {delete} AS {DELETE_COLUMN} FROM (SELECT DISTINCT * FROM __inlet_result)"),
        )
        .await
    }

    pub(super) async fn check_null_keys(&self, context: &SessionContext) -> Result<()> {
        let null_keys: Vec<String> = self.config.keys.iter().map(|k| format!("{} IS NULL", quote(k))).collect();
        let nulls = self
            .query(context, &format!("SELECT COUNT(*) FROM __inlet_result WHERE {}", null_keys.join(" OR ")))
            .await?;
        let null_count = first_count(&nulls);
        if null_count > 0 {
            return Err(self.transform_error(format!(
                "{null_count} result rows have a NULL in key {:?}; filter them out in the query",
                self.config.keys
            )));
        }
        Ok(())
    }
}
