//! Where a PostgreSQL source stands, as committed with its rows in the table's log.

use serde::{Deserialize, Serialize};

/// This version's position format.
pub const FORMAT: u32 = 1;

/// The position of a PostgreSQL source.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Position {
    pub format: u32,
    /// A full load, or the snapshot of `cdc`, in progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load: Option<Load>,
    /// Full loads completed.
    #[serde(default)]
    pub loads: u64,
    /// `incremental`: the highest cursor value landed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<CursorMark>,
    /// `cdc`: where the log stands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<Stream>,
    /// `cdc` started over (`inlet resnapshot`), until the deletes it owes are in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resnapshot: Option<Resnapshot>,
}

/// A CDC source started over: its first commit replaced the table's rows (its change log)
/// with a new snapshot. The keys live in the replaced log that the snapshot lacks were
/// deleted while no slot was read: once the snapshot is in, they land as deletes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resnapshot {
    /// The table's version before the restart: the log whose live keys are checked.
    pub before_version: i64,
    /// Where the replaced log stood (its last transaction's end): the new snapshot's rows
    /// and the deletes carry it as `_lsn`, above every change the replaced log held (a merge
    /// by `_lsn` takes them over what it kept) and at or below every change the new slot
    /// gives (which it takes over them).
    pub lsn: u64,
}

/// A load in progress.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Load {
    /// The key's text of the last row landed (`None`: none yet).
    pub after: Option<Vec<String>>,
    /// Rows landed so far.
    pub rows: u64,
    /// The snapshot the load started in (`pg_current_snapshot()`); a load resumed by a later
    /// run reads its remaining rows in a newer one.
    pub snapshot: String,
}

/// The high-water mark of an incremental source.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CursorMark {
    /// The cursor's text (`2024-05-01 10:00:00+00`, `42`).
    pub value: String,
    /// The cursor as a number: microseconds since the epoch, or the integer.
    pub number: i64,
    /// Rows landed whose cursor is within `lag_secs` of the mark: (cursor number, hash of
    /// key and cursor text). A row read again is dropped when found here.
    #[serde(default)]
    pub seen: Vec<(i64, String)>,
}

/// Where a CDC source stands in the log.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Stream {
    pub slot: String,
    /// The end of the last transaction landed (or the slot's consistent point): the slot
    /// is moved here, and transactions ending at or before it are skipped.
    pub lsn: u64,
    /// The snapshot the initial load read: transactions it saw are skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<SnapshotFilter>,
    /// The table's columns (name, type OID) as landed so far: a change logged with one of
    /// them missing or of another type stops the source; one with more evolves the table.
    #[serde(default)]
    pub columns: Vec<(String, u32)>,
}

/// Which transactions a snapshot saw (`pg_current_snapshot()`), for those committed before
/// `until_lsn` (the WAL's end when it was taken; later commits it cannot have seen).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SnapshotFilter {
    pub xmin: u64,
    pub xmax: u64,
    pub xip: Vec<u64>,
    pub until_lsn: u64,
}

impl SnapshotFilter {
    /// Parses `xmin:xmax:xip,xip`.
    pub fn parse(text: &str, until_lsn: u64) -> Option<SnapshotFilter> {
        let mut parts = text.split(':');
        let xmin = parts.next()?.parse().ok()?;
        let xmax = parts.next()?.parse().ok()?;
        let xip = match parts.next() {
            Some("") | None => Vec::new(),
            Some(list) => list.split(',').map(str::parse).collect::<Result<_, _>>().ok()?,
        };
        Some(SnapshotFilter { xmin, xmax, xip, until_lsn })
    }

    /// Whether the snapshot saw the transaction `xid` (32 bits, as the log gives it) that
    /// committed at `commit_lsn`.
    pub fn saw(&self, xid: u32, commit_lsn: u64) -> bool {
        if commit_lsn >= self.until_lsn {
            return false;
        }
        // The full id, as PostgreSQL compares 32-bit ids: within 2^31 before `xmax` is the
        // past, anything else its future.
        let delta = (self.xmax as u32).wrapping_sub(xid) as i32;
        if delta <= 0 {
            return false;
        }
        let full = self.xmax.saturating_sub(u64::from(delta.unsigned_abs()));
        full < self.xmin || !self.xip.contains(&full)
    }
}

/// An LSN as PostgreSQL prints it: `16/B374D848`.
pub fn lsn_text(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
}

/// Parses `16/B374D848`.
pub fn parse_lsn(text: &str) -> Option<u64> {
    let (high, low) = text.split_once('/')?;
    Some((u64::from_str_radix(high, 16).ok()? << 32) | u64::from_str_radix(low, 16).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_see_what_committed_before_them() {
        let filter = SnapshotFilter::parse("100:105:101,103", 5000).unwrap();
        assert!(filter.saw(99, 10));
        assert!(filter.saw(102, 10));
        assert!(!filter.saw(101, 10), "in progress when taken");
        assert!(!filter.saw(105, 10), "started after");
        assert!(!filter.saw(99, 5000), "committed after the snapshot's WAL end");
        assert_eq!(SnapshotFilter::parse("7:7:", 1).unwrap().xip, Vec::<u64>::new());
    }

    #[test]
    fn ids_wrap_by_epoch() {
        let xmax = (1u64 << 32) + 10;
        let filter = SnapshotFilter { xmin: xmax, xmax, xip: vec![], until_lsn: u64::MAX };
        assert!(filter.saw(5, 1), "epoch 1, id 5");
        assert!(filter.saw(u32::MAX - 1, 1), "the previous epoch");
        assert!(!filter.saw(11, 1));
    }

    #[test]
    fn lsns_print_and_parse() {
        assert_eq!(lsn_text(0x16_B374_D848), "16/B374D848");
        assert_eq!(parse_lsn("16/B374D848"), Some(0x16_B374_D848));
        assert_eq!(parse_lsn("0/0"), Some(0));
    }
}
