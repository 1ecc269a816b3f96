//! The incremental window of a page: records outside it or landed before are dropped, those
//! without a cursor or key quarantined, and the highest cursor kept for the sweep's end.

use arrow::array::{BooleanArray, RecordBatch};
use inlet_engine::source::{BadRecord, ErrorCode, RawChunk};
use tracing::debug;

use super::position::{self, Stream, Sweep, compare, max_of, record_hash};
use super::records::{cell, row_json, value_at};
use super::sweep::{ParentRecord, Sweeping};
use crate::Error;

impl Sweeping {
    /// The page's records less those outside the incremental window and those landed before;
    /// records without their cursor or key, or with a cursor of another kind than the
    /// initial value's, go to quarantine. Also the highest cursor value of what is kept, and
    /// the (cursor, hash) of what is kept and quarantined.
    ///
    /// A quarantined record has no cursor to trust: it is remembered at the highest cursor
    /// met before it, which is where a sweep asking from `cursor - lag` meets it again when
    /// the API sorts by cursor, so a record quarantined at the boundary is not quarantined
    /// twice.
    #[allow(clippy::type_complexity)]
    pub(super) fn filter(
        &mut self,
        chunk: RawChunk,
        stream: &Stream,
        sweep: &Sweep,
        parent: Option<&ParentRecord>,
    ) -> Result<(RawChunk, Option<String>, Vec<(String, String)>), Error> {
        let resource = self.resource.clone();
        let Some(incremental) = &resource.incremental else {
            return Ok((chunk, None, Vec::new()));
        };
        let RawChunk { batch, rows, bad, text, raw_style } = chunk;
        let kind = position::CursorValue::parse(&incremental.initial);
        let mut keep = Vec::with_capacity(batch.num_rows());
        let mut max: Option<String> = sweep.max.clone();
        let mut hashes = Vec::new();
        let parent_key = parent.map(|p| p.key.as_str());
        let key_columns: Vec<String> = resource.primary_key.iter().map(|k| k.as_str().to_owned()).collect();
        // Bad records the decoder found come in record order with the good ones.
        let mut pending: Vec<BadRecord> = bad;
        pending.reverse();
        let mut quarantined = Vec::new();
        let mut quarantine =
            |this: &mut Self, record: BadRecord, at: &Option<String>, hashes: &mut Vec<(String, String)>| {
                let place = at.clone().or_else(|| sweep.start.clone()).unwrap_or_default();
                let mut named = vec![("\u{0}bad", record.raw.as_deref())];
                if let Some(parent_key) = parent_key {
                    named.push(("\u{0}parent", Some(parent_key)));
                }
                let hash = record_hash(&named, "");
                if landed(stream, sweep, &place, &hash) || !this.landed.insert(short_hash(&hash)) {
                    return;
                }
                hashes.push((place, hash));
                quarantined.push(record);
            };
        for row in 0..batch.num_rows() {
            let number = rows.value(row);
            while pending.last().is_some_and(|b| b.row < number) {
                if let Some(record) = pending.pop() {
                    quarantine(self, record, &max, &mut hashes);
                }
            }
            let cursor = value_at(&batch, row, &incremental.path);
            let problem = match &cursor {
                None => Some(format!("the record has no cursor at `{}`", incremental.path.as_str())),
                Some(value) if !same_kind(&kind, value) => Some(format!(
                    "the cursor `{value}` at `{}` is not a {} like the initial value",
                    incremental.path.as_str(),
                    kind_name(&kind)
                )),
                Some(_) => None,
            };
            let Some(cursor) = cursor.filter(|_| problem.is_none()) else {
                let code = if problem.as_deref().is_some_and(|p| p.contains("no cursor")) {
                    ErrorCode::MissingKey
                } else {
                    ErrorCode::BadCursor
                };
                let record = BadRecord {
                    row: number,
                    code,
                    message: problem.unwrap_or_default(),
                    raw: Some(row_json(&batch, row)),
                };
                quarantine(self, record, &max, &mut hashes);
                keep.push(false);
                continue;
            };
            // Outside the window asked for: another sweep's, or no one's.
            let before = sweep.start.as_deref().is_some_and(|s| compare(&cursor, s).is_lt());
            let after = incremental.end.as_deref().is_some_and(|e| compare(&cursor, e).is_ge());
            if before || after {
                keep.push(false);
                continue;
            }
            let key: Vec<(&str, Option<String>)> = if key_columns.is_empty() {
                // No primary key: the whole record names it.
                own_fields(&batch, row)
            } else {
                let values: Vec<(&str, Option<String>)> = resource
                    .primary_key
                    .iter()
                    .zip(&key_columns)
                    .map(|(path, name)| (name.as_str(), value_at(&batch, row, path)))
                    .collect();
                if let Some((name, _)) = values.iter().find(|(_, v)| v.is_none()) {
                    let record = BadRecord {
                        row: number,
                        code: ErrorCode::MissingKey,
                        message: format!("the record has no `{name}` (its primary key)"),
                        raw: Some(row_json(&batch, row)),
                    };
                    quarantine(self, record, &max, &mut hashes);
                    keep.push(false);
                    continue;
                }
                values
            };
            let mut named: Vec<(&str, Option<&str>)> = key.iter().map(|(n, v)| (*n, v.as_deref())).collect();
            if let Some(parent_key) = parent_key {
                named.push(("\u{0}parent", Some(parent_key)));
            }
            let hash = record_hash(&named, &cursor);
            if landed(stream, sweep, &cursor, &hash) || !self.landed.insert(short_hash(&hash)) {
                keep.push(false);
                continue;
            }
            max = Some(max_of(max, &cursor));
            hashes.push((cursor, hash));
            keep.push(true);
        }
        while let Some(record) = pending.pop() {
            quarantine(self, record, &max, &mut hashes);
        }
        let mask = BooleanArray::from(keep);
        let dropped = mask.false_count();
        let chunk = RawChunk { batch, rows, bad: quarantined, text, raw_style }
            .retain(&mask)
            .map_err(|e| Error::Internal(format!("filtering records: {e}")))?;
        if dropped > 0 {
            debug!(source = %resource.name, dropped, "records outside the window, landed before or quarantined");
        }
        Ok((chunk, max, hashes))
    }
}

/// A record's own fields (those it has, not null), by name: the same whatever columns the
/// other records of its page brought, in whatever order.
fn own_fields(batch: &RecordBatch, row: usize) -> Vec<(&str, Option<String>)> {
    let mut fields: Vec<(&str, Option<String>)> = batch
        .schema_ref()
        .fields()
        .iter()
        .enumerate()
        .filter_map(|(i, f)| cell(batch.column(i), row).map(|v| (f.name().as_str(), Some(v))))
        .collect();
    fields.sort_unstable_by(|a, b| a.0.cmp(b.0));
    fields
}

/// Whether a stream landed the record `hash` at `cursor`, before this sweep or in it.
fn landed(stream: &Stream, sweep: &Sweep, cursor: &str, hash: &str) -> bool {
    stream.boundary.get(cursor).is_some_and(|h| h.iter().any(|x| x == hash))
        || sweep.seen.get(cursor).is_some_and(|h| h.iter().any(|x| x == hash))
}

/// The first 64 bits of a record hash.
fn short_hash(hash: &str) -> u64 {
    u64::from_str_radix(hash, 16).unwrap_or_default()
}

/// Whether a cursor value is of the kind of the initial value (text takes anything).
fn same_kind(kind: &position::CursorValue, value: &str) -> bool {
    matches!(
        (kind, position::CursorValue::parse(value)),
        (position::CursorValue::Time(_), position::CursorValue::Time(_))
            | (position::CursorValue::Number(_), position::CursorValue::Number(_))
            | (position::CursorValue::Text(_), _)
    )
}

fn kind_name(kind: &position::CursorValue) -> &'static str {
    match kind {
        position::CursorValue::Time(_) => "timestamp",
        position::CursorValue::Number(_) => "number",
        position::CursorValue::Text(_) => "text",
    }
}

#[cfg(test)]
mod tests {
    use inlet_engine::config::JsonPath;

    use super::*;

    #[test]
    fn a_record_without_key_is_named_by_its_own_fields() {
        let decode = |body: &[u8]| crate::json::decode_body(body, &JsonPath::root(), &[], false).unwrap().chunk.batch;
        let alone = decode(br#"[{"id": 1, "u": "t"}]"#);
        let among = decode(br#"[{"u": "t2", "id": 2, "extra": "x"}, {"id": 1, "u": "t", "extra": null}]"#);
        assert_eq!(own_fields(&alone, 0), own_fields(&among, 1));
        assert_ne!(own_fields(&among, 0), own_fields(&among, 1));
    }
}
