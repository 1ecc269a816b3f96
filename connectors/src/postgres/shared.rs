//! One snapshot across the tables of a `full` source: the first of its tables to begin a
//! load in this process exports a snapshot (`pg_export_snapshot()`) from a session of its
//! own, held open, and every table of the source (that one included) begins its load with
//! `SET TRANSACTION SNAPSHOT`, so a load of several tables sees one moment of the database.
//!
//! The exporting session ends once every table of the source has imported the snapshot, or
//! after [`HOLD_SECS`] (a table not run now, or one that failed first, must not keep a
//! transaction open on the database for ever: a table that comes later takes a snapshot of
//! its own, and says so).

use std::collections::{BTreeSet, HashMap};
use std::sync::LazyLock;

use tokio::sync::Mutex;
use tokio_postgres::Client;
use tracing::{info, warn};

use super::connect::{Database, literal};
use super::position::SnapshotFilter;
use super::scan::begin_snapshot;
use crate::Error;

/// The longest an exported snapshot waits for the rest of its source's tables.
pub const HOLD_SECS: u64 = 600;

/// A snapshot exported for a source's tables, and those yet to import it.
struct Export {
    id: String,
    waiting: BTreeSet<String>,
    /// The session whose open transaction keeps the snapshot importable.
    _holder: Client,
}

/// Exports by source (pipeline, database, source as written).
static EXPORTS: LazyLock<Mutex<HashMap<String, Export>>> = LazyLock::new(Default::default);

/// Begins `client`'s transaction in the snapshot `table` shares with `tables` (the source's
/// tables, `table` among them), exporting it first when none waits for `table`. The
/// snapshot as [`begin_snapshot`] gives it.
pub async fn begin_shared(
    db: &Database,
    client: &Client,
    source: &str,
    table: &str,
    tables: &BTreeSet<String>,
) -> Result<(String, SnapshotFilter), Error> {
    let key = format!("{}/{source}", db.name);
    let mut exports = EXPORTS.lock().await;
    let waiting = exports.get(&key).is_some_and(|e| e.waiting.contains(table));
    if !waiting {
        let what = "exporting a snapshot for the source's tables";
        let holder = db.connect().await?;
        holder
            .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await
            .map_err(|e| db.error(what, &e))?;
        let id: String =
            holder.query_one("SELECT pg_export_snapshot()", &[]).await.map_err(|e| db.error(what, &e))?.get(0);
        if exports.contains_key(&key) {
            warn!(source = %source, table = %table, "the source's previous snapshot was taken by this table already: a new one for the tables that begin now");
        }
        info!(source = %source, table = %table, tables = tables.len(), "exported a snapshot for the source's tables");
        exports.insert(key.clone(), Export { id: id.clone(), waiting: tables.clone(), _holder: holder });
        let expired_key = key.clone();
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_secs(HOLD_SECS)).await;
            let mut exports = EXPORTS.lock().await;
            if exports.get(&expired_key).is_some_and(|e| e.id == id)
                && let Some(export) = exports.remove(&expired_key)
            {
                warn!(source = %expired_key, left = ?export.waiting, "tables did not import the exported snapshot in time: it is released");
            }
        });
    }
    let export = exports.get_mut(&key).ok_or_else(|| Error::Internal(format!("the snapshot of `{key}` vanished")))?;
    let what = "importing the source's snapshot";
    client.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY").await.map_err(|e| db.error(what, &e))?;
    client
        .batch_execute(&format!("SET TRANSACTION SNAPSHOT {}", literal(&export.id)))
        .await
        .map_err(|e| db.error(what, &e))?;
    export.waiting.remove(table);
    if export.waiting.is_empty() {
        // Every table has it: the exporting session may end.
        exports.remove(&key);
    }
    drop(exports);
    begin_snapshot(db, client, true).await
}
