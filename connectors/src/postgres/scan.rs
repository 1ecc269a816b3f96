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
use super::rows::Rows;
use super::types::Reader;
use crate::Error;

/// What a scan reads.
pub struct Scan {
    pub relation: std::sync::Arc<Relation>,
    /// Columns the rows are ordered and resumed by (empty: one unordered `COPY`).
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
    pub rows: Rows,
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
            let order: Vec<String> = self.scan.key.iter().map(|k| ident(k)).collect();
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
        let columns_of = std::sync::Arc::new(self.scan.relation.columns.clone());
        let mut rows = match self.scan.snapshot {
            Some((lsn, micros)) => Rows::new(columns_of, true, page_rows).with_snapshot(lsn, micros),
            None => Rows::new(columns_of, false, page_rows),
        };
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
            while rows.len() < page_rows {
                let Some(tuple) = self.parser.next_tuple().map_err(|m| db.fail(&what, m))? else { break };
                let mut values: Vec<Option<&[u8]>> = Vec::with_capacity(columns + trailing);
                let mut reader = Reader(tuple);
                let count = reader.i16().map_err(|m| db.fail(&what, m))?;
                if count as usize != columns + trailing {
                    return Err(db.fail(&what, format!("a row of {count} fields, expected {}", columns + trailing)));
                }
                for _ in 0..count {
                    values.push(reader.value().map_err(|m| db.fail(&what, m))?);
                }
                self.in_chunk += 1;
                let texts: Vec<Option<&str>> =
                    values[columns..].iter().map(|v| v.and_then(|b| std::str::from_utf8(b).ok())).collect();
                if !self.scan.key.is_empty() {
                    let key: Vec<String> =
                        texts[..self.scan.key.len()].iter().map(|t| t.unwrap_or_default().to_owned()).collect();
                    last_key = Some(key);
                }
                if accept(&texts) {
                    rows.push(&values[..columns])?;
                }
            }
            if rows.len() >= page_rows {
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
                if !rows.is_empty() {
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
        Ok(Some(ScanPage { rows, bytes, last_key, exhausted: self.exhausted }))
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
