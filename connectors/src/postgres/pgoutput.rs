//! The messages of `pgoutput`, PostgreSQL's logical replication output plugin (protocol
//! version 1, binary values): what a transaction did, a message at a time.

use super::rows::Value;
use super::types::Reader;

/// Microseconds from 1970-01-01 to 2000-01-01.
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// One message.
#[derive(Debug)]
pub enum Message<'a> {
    Begin {
        final_lsn: u64,
        commit_micros: i64,
        xid: u32,
    },
    /// `end_lsn`: where the transaction's commit record ends.
    Commit {
        end_lsn: u64,
    },
    Relation {
        id: u32,
        schema: &'a str,
        name: &'a str,
        columns: Vec<RelationColumn<'a>>,
    },
    Insert {
        relation: u32,
        new: Vec<Value<'a>>,
    },
    /// `old` is the key (`K`) or the whole old row (`O`) when the replica identity sends it.
    Update {
        relation: u32,
        old: Option<Vec<Value<'a>>>,
        new: Vec<Value<'a>>,
    },
    Delete {
        relation: u32,
        old: Vec<Value<'a>>,
    },
    Truncate {
        relations: Vec<u32>,
    },
    /// Types, origins, logical messages: nothing to land.
    Other,
}

/// A column of a `Relation` message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationColumn<'a> {
    pub key: bool,
    pub name: &'a str,
    pub type_oid: u32,
    pub typmod: i32,
}

/// Parses one message.
pub fn parse(data: &[u8]) -> Result<Message<'_>, String> {
    let mut r = Reader(data);
    let tag = r.u8()?;
    Ok(match tag {
        b'B' => {
            let final_lsn = r.i64()? as u64;
            let commit_micros = r.i64()?.saturating_add(PG_EPOCH_MICROS);
            let xid = r.i32()? as u32;
            Message::Begin { final_lsn, commit_micros, xid }
        }
        b'C' => {
            let _flags = r.u8()?;
            let _commit_lsn = r.i64()?;
            let end_lsn = r.i64()? as u64;
            let _commit_micros = r.i64()?;
            Message::Commit { end_lsn }
        }
        b'R' => {
            let id = r.i32()? as u32;
            let schema = r.cstr()?;
            let name = r.cstr()?;
            let _identity = r.u8()?;
            let count = r.i16()?;
            let mut columns = Vec::with_capacity(count.max(0) as usize);
            for _ in 0..count {
                let flags = r.u8()?;
                let name = r.cstr()?;
                let type_oid = r.i32()? as u32;
                let typmod = r.i32()?;
                columns.push(RelationColumn { key: flags & 1 != 0, name, type_oid, typmod });
            }
            Message::Relation { id, schema, name, columns }
        }
        b'I' => {
            let relation = r.i32()? as u32;
            expect(&mut r, b'N')?;
            Message::Insert { relation, new: tuple(&mut r)? }
        }
        b'U' => {
            let relation = r.i32()? as u32;
            let mut old = None;
            let mut marker = r.u8()?;
            if marker == b'K' || marker == b'O' {
                old = Some(tuple(&mut r)?);
                marker = r.u8()?;
            }
            if marker != b'N' {
                return Err(format!("an update without its new row (`{}`)", marker as char));
            }
            Message::Update { relation, old, new: tuple(&mut r)? }
        }
        b'D' => {
            let relation = r.i32()? as u32;
            let marker = r.u8()?;
            if marker != b'K' && marker != b'O' {
                return Err(format!("a delete without its old row (`{}`)", marker as char));
            }
            Message::Delete { relation, old: tuple(&mut r)? }
        }
        b'T' => {
            let count = r.i32()?;
            let _options = r.u8()?;
            let relations = (0..count.max(0)).map(|_| r.i32().map(|id| id as u32)).collect::<Result<_, _>>()?;
            Message::Truncate { relations }
        }
        b'Y' | b'O' | b'M' => Message::Other,
        other => return Err(format!("an unknown message `{}`", other as char)),
    })
}

fn expect(r: &mut Reader, wanted: u8) -> Result<(), String> {
    let found = r.u8()?;
    if found == wanted { Ok(()) } else { Err(format!("expected `{}`, found `{}`", wanted as char, found as char)) }
}

fn tuple<'a>(r: &mut Reader<'a>) -> Result<Vec<Value<'a>>, String> {
    let count = r.i16()?;
    let mut values = Vec::with_capacity(count.max(0) as usize);
    for _ in 0..count {
        values.push(match r.u8()? {
            b'n' => Value::Null,
            b'u' => Value::Unchanged,
            b'b' => Value::Binary(r.value()?.unwrap_or_default()),
            b't' => return Err("a value in text form (binary mode is asked for)".to_owned()),
            other => return Err(format!("an unknown value kind `{}`", other as char)),
        });
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_an_update_with_an_unchanged_toast_value() {
        let mut data = vec![b'U'];
        data.extend(16384i32.to_be_bytes());
        data.push(b'N');
        data.extend(2i16.to_be_bytes());
        data.push(b'b');
        data.extend(4i32.to_be_bytes());
        data.extend(7i32.to_be_bytes());
        data.push(b'u');
        let Message::Update { relation, old, new } = parse(&data).unwrap() else { panic!("not an update") };
        assert_eq!((relation, old.is_none()), (16384, true));
        assert!(matches!(new[0], Value::Binary(b) if b == 7i32.to_be_bytes()));
        assert!(matches!(new[1], Value::Unchanged));
        assert!(parse(&data[..data.len() - 3]).is_err(), "a cut message is an error, not a panic");
    }
}
