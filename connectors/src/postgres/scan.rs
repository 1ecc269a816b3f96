//! Reading a table (or query) in key order, a chunk of rows per binary `COPY`, decoded
//! straight into Arrow: the full load, the incremental load and the CDC snapshot.
//!
//! Each chunk is `COPY (SELECT <columns>, <key>::text... FROM <table> WHERE <key> > <last key
//! read> ORDER BY <key> LIMIT <rows_per_chunk>) TO STDOUT (FORMAT binary)`, in the session's
//! one transaction: every chunk sees the same snapshot. The key's text after each page is
//! where a killed load resumes. A relation without a key is read by one `COPY`, in no order.

use std::pin::Pin;

use bytes::Bytes;
use futures::StreamExt;
use tokio_postgres::{Client, CopyOutStream};

use super::catalog::Relation;
use super::connect::{Database, ident, literal};
use super::position::{SnapshotFilter, parse_lsn};
use inlet_engine::source::RawChunk;

use super::rows::Rows;
use super::types::Reader;
use crate::Error;

/// Starts the session's one transaction: `REPEATABLE READ`, read only. Its snapshot's text,
/// and which transactions it saw (for those committed before the WAL inserted so far, read
/// just after it: a later commit cannot be in it).
pub async fn begin_snapshot(db: &Database, client: &Client, begun: bool) -> Result<(String, SnapshotFilter), Error> {
    let what = "starting the snapshot";
    if !begun {
        client
            .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await
            .map_err(|e| db.error(what, &e))?;
    }
    // The first statement takes the snapshot.
    let row = client
        .query_one("SELECT pg_current_snapshot()::text, pg_current_wal_insert_lsn()::text", &[])
        .await
        .map_err(|e| db.error(what, &e))?;
    let (snapshot, until): (String, String) = (row.get(0), row.get(1));
    let filter = parse_lsn(&until)
        .and_then(|until| SnapshotFilter::parse(&snapshot, until))
        .ok_or_else(|| db.fail(what, format!("a snapshot `{snapshot}` at `{until}`")))?;
    Ok((snapshot, filter))
}

/// What a scan reads.
pub struct Scan {
    pub relation: std::sync::Arc<Relation>,
    /// Columns the rows are ordered and resumed by (empty: one unordered `COPY`): unique and
    /// never NULL (a NULL is an error naming the column).
    pub key: Vec<String>,
    /// Text expressions read after the key's text, handed to the row filter.
    pub extra: Vec<String>,
    /// A condition the rows meet, besides the key.
    pub filter: Option<String>,
    pub rows_per_chunk: u64,
    /// A CDC snapshot's `_lsn` and `_commit_ts`: its rows get the change columns.
    pub snapshot: Option<(u64, i64)>,
}

/// A page as read.
pub struct ScanPage {
    /// Its rows, decoded (those that could not be, in quarantine).
    pub chunk: RawChunk,
    /// Rows read into it.
    pub rows: u64,
    pub bytes: u64,
    /// The key's text of the last row read (accepted or not).
    pub last_key: Option<Vec<String>>,
    /// Whether the relation has no rows left.
    pub exhausted: bool,
}

/// A scan in progress.
pub struct Scanning {
    scan: Scan,
    after: Option<Vec<String>>,
    stream: Option<Pin<Box<CopyOutStream>>>,
    parser: CopyParser,
    in_chunk: u64,
    exhausted: bool,
}

impl Scanning {
    /// Starts after `after` (a key's text), or at the first row.
    pub fn new(scan: Scan, after: Option<Vec<String>>) -> Scanning {
        Scanning { scan, after, stream: None, parser: CopyParser::default(), in_chunk: 0, exhausted: false }
    }

    /// The statement of the next chunk.
    fn statement(&self) -> String {
        let relation = &self.scan.relation;
        let mut select: Vec<String> = relation.columns.iter().map(|c| ident(&c.name)).collect();
        // Aliased: the key's text must not shadow the key in ORDER BY.
        select.extend(self.scan.key.iter().enumerate().map(|(i, k)| format!("{}::text AS __inlet_key{i}", ident(k))));
        select.extend(self.scan.extra.iter().enumerate().map(|(i, e)| format!("{e} AS __inlet_extra{i}")));
        let mut conditions: Vec<String> = self.scan.filter.iter().cloned().collect();
        if let Some(after) = &self.after {
            let columns: Vec<String> = self.scan.key.iter().map(|k| ident(k)).collect();
            let values: Vec<String> = self
                .scan
                .key
                .iter()
                .zip(after)
                .map(|(k, v)| {
                    let ty = relation.column(k).map_or("text", |c| c.type_name.as_str());
                    format!("{}::{}", literal(v), ident(ty))
                })
                .collect();
            conditions.push(format!("({}) > ({})", columns.join(", "), values.join(", ")));
        }
        let mut sql = format!("SELECT {} FROM {}", select.join(", "), relation.from);
        if !conditions.is_empty() {
            sql.push_str(&format!(" WHERE {}", conditions.join(" AND ")));
        }
        if !self.scan.key.is_empty() {
            // A configured key may hold NULLs: they come first, so the first chunk finds them
            // (an error), instead of being left behind the last key read.
            let nulls = if relation.key_from_catalog { "" } else { " NULLS FIRST" };
            let order: Vec<String> = self.scan.key.iter().map(|k| format!("{}{nulls}", ident(k))).collect();
            sql.push_str(&format!(" ORDER BY {} LIMIT {}", order.join(", "), self.scan.rows_per_chunk));
        }
        format!("COPY ({sql}) TO STDOUT (FORMAT binary)")
    }

    /// The next page of at most `page_rows` rows, `None` once every row was read. `accept`
    /// sees each row's key and extra texts and says whether it is kept.
    pub async fn next_page(
        &mut self,
        db: &Database,
        client: &Client,
        page_rows: usize,
        accept: &mut (dyn FnMut(&[Option<&str>]) -> bool + Send),
    ) -> Result<Option<ScanPage>, Error> {
        if self.exhausted {
            return Ok(None);
        }
        let what = format!("reading `{}`", self.scan.relation.name);
        let columns = self.scan.relation.columns.len();
        let trailing = self.scan.key.len() + self.scan.extra.len();
        // The rows kept, as the COPY sent them: decoded on a blocking thread once the page
        // is whole.
        let mut tuples: Vec<u8> = Vec::new();
        let mut kept = 0usize;
        let mut bytes = 0u64;
        let mut last_key = None;
        loop {
            if self.stream.is_none() {
                let statement = self.statement();
                let stream = client.copy_out(statement.as_str()).await.map_err(|e| db.error(&what, &e))?;
                self.stream = Some(Box::pin(stream));
                self.parser = CopyParser::default();
                self.in_chunk = 0;
            }
            // Rows already buffered first.
            while kept < page_rows {
                let Some(tuple) = self.parser.next_tuple().map_err(|m| db.fail(&what, m))? else { break };
                let mut reader = Reader(tuple);
                let count = reader.i16().map_err(|m| db.fail(&what, m))?;
                if count as usize != columns + trailing {
                    return Err(db.fail(&what, format!("a row of {count} fields, expected {}", columns + trailing)));
                }
                let mut texts: Vec<Option<&str>> = Vec::with_capacity(trailing);
                for i in 0..columns + trailing {
                    let value = reader.value().map_err(|m| db.fail(&what, m))?;
                    if i >= columns {
                        texts.push(value.and_then(|b| std::str::from_utf8(b).ok()));
                    }
                }
                self.in_chunk += 1;
                if !self.scan.key.is_empty() {
                    let mut key = Vec::with_capacity(self.scan.key.len());
                    for (name, text) in self.scan.key.iter().zip(&texts) {
                        // A NULL cannot be paged past (it compares as neither before nor after).
                        let text = text.ok_or_else(|| {
                            db.refuse(&what, format!("a row has a NULL in key column `{name}`; the key must name each row (set `primary_key`)"))
                        })?;
                        key.push(text.to_owned());
                    }
                    last_key = Some(key);
                }
                if accept(&texts) {
                    tuples.extend_from_slice(tuple);
                    kept += 1;
                }
            }
            if kept >= page_rows {
                break;
            }
            if self.parser.ended {
                // The chunk is read: a short one was the last.
                self.stream = None;
                if self.scan.key.is_empty() || self.in_chunk < self.scan.rows_per_chunk {
                    self.exhausted = true;
                    break;
                }
                if let Some(key) = &last_key {
                    self.after = Some(key.clone());
                }
                if kept > 0 {
                    break;
                }
                continue;
            }
            let stream = self.stream.as_mut().ok_or_else(|| Error::Internal("a scan without its stream".into()))?;
            match stream.next().await {
                Some(Ok(chunk)) => {
                    bytes += chunk.len() as u64;
                    self.parser.feed(chunk);
                }
                Some(Err(e)) => return Err(db.error(&what, &e)),
                None => {
                    if !self.parser.ended {
                        return Err(db.fail(&what, "the COPY ended without its trailer"));
                    }
                }
            }
        }
        if let Some(key) = &last_key {
            self.after = Some(key.clone());
        }
        let columns_of = std::sync::Arc::new(self.scan.relation.columns.clone());
        let snapshot = self.scan.snapshot;
        let decode = move || -> Result<RawChunk, Error> {
            let mut rows = match snapshot {
                Some((lsn, micros)) => Rows::new(columns_of, true, kept).with_snapshot(lsn, micros),
                None => Rows::new(columns_of, false, kept),
            };
            let mut reader = Reader(&tuples);
            let mut values: Vec<Option<&[u8]>> = Vec::with_capacity(columns);
            for _ in 0..kept {
                let count = reader.i16().map_err(Error::Internal)?;
                values.clear();
                for i in 0..count as usize {
                    let value = reader.value().map_err(Error::Internal)?;
                    if i < columns {
                        values.push(value);
                    }
                }
                rows.push(&values)?;
            }
            rows.finish()
        };
        let chunk = tokio::task::spawn_blocking(decode)
            .await
            .map_err(|e| Error::Internal(format!("decoding a page of `{}`: {e}", self.scan.relation.name)))??;
        Ok(Some(ScanPage { chunk, rows: kept as u64, bytes, last_key, exhausted: self.exhausted }))
    }
}

/// Splits a binary `COPY` stream into tuples.
#[derive(Default)]
struct CopyParser {
    buffer: Vec<u8>,
    offset: usize,
    header: bool,
    ended: bool,
}

/// `PGCOPY\n\xff\r\n\0`, flags and header extension length.
const SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";

impl CopyParser {
    fn feed(&mut self, chunk: Bytes) {
        if self.offset > 0 && self.offset * 2 > self.buffer.len() {
            self.buffer.drain(..self.offset);
            self.offset = 0;
        }
        self.buffer.extend_from_slice(&chunk);
    }

    /// The next complete tuple (its field count first), `None` when more bytes are needed or
    /// the trailer was read.
    fn next_tuple(&mut self) -> Result<Option<&[u8]>, String> {
        if self.ended {
            return Ok(None);
        }
        let data = &self.buffer[self.offset..];
        if !self.header {
            if data.len() < SIGNATURE.len() + 8 {
                return Ok(None);
            }
            if &data[..SIGNATURE.len()] != SIGNATURE {
                return Err("not a binary COPY stream".to_owned());
            }
            let extension = u32::from_be_bytes([data[15], data[16], data[17], data[18]]) as usize;
            if data.len() < 19 + extension {
                return Ok(None);
            }
            self.offset += 19 + extension;
            self.header = true;
            return self.next_tuple();
        }
        if data.len() < 2 {
            return Ok(None);
        }
        let count = i16::from_be_bytes([data[0], data[1]]);
        if count == -1 {
            self.ended = true;
            self.offset += 2;
            return Ok(None);
        }
        let mut at = 2;
        for _ in 0..count.max(0) {
            if data.len() < at + 4 {
                return Ok(None);
            }
            let length = i32::from_be_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]]);
            at += 4;
            if length > 0 {
                at += length as usize;
            }
        }
        if data.len() < at {
            return Ok(None);
        }
        let start = self.offset;
        self.offset += at;
        Ok(Some(&self.buffer[start..start + at]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tuples_split_across_chunks() {
        let mut stream = SIGNATURE.to_vec();
        stream.extend(0u32.to_be_bytes());
        stream.extend(0u32.to_be_bytes());
        for value in [7i32, 8] {
            stream.extend(1i16.to_be_bytes());
            stream.extend(4i32.to_be_bytes());
            stream.extend(value.to_be_bytes());
        }
        stream.extend(1i16.to_be_bytes());
        stream.extend((-1i32).to_be_bytes());
        stream.extend((-1i16).to_be_bytes());
        let mut parser = CopyParser::default();
        let mut tuples = Vec::new();
        for byte in stream {
            parser.feed(Bytes::from(vec![byte]));
            while let Some(tuple) = parser.next_tuple().unwrap() {
                tuples.push(tuple.to_vec());
            }
        }
        assert!(parser.ended);
        assert_eq!(tuples.len(), 3);
        assert_eq!(&tuples[1][6..], &8i32.to_be_bytes());
        assert_eq!(&tuples[2][2..], &(-1i32).to_be_bytes());
    }
}
