//! What CDC needs of the database before it reads: logical WAL, a table whose deletes can be
//! named, a publication of the table, and a replication slot that is this source's.
//!
//! A slot is taken as this source's only when it is in this database, uses `pgoutput` and is
//! not in use; a slot whose confirmed position is past what the table's log holds is refused
//! (changes between the two are gone from it: the table was restored, or someone else moved
//! the slot), never read from.

use tokio_postgres::Client;
use tracing::{info, warn};

use super::Context;
use super::catalog::Relation;
use super::connect::{ident, literal};
use super::position::{Stream, lsn_text, parse_lsn};
use crate::Error;

/// Refuses what CDC cannot read: WAL without logical decoding, a table whose updates and
/// deletes cannot be named.
pub async fn check_table(context: &Context, client: &Client, relation: &Relation) -> Result<(), Error> {
    let db = &context.db;
    let table = &relation.name;
    let what = format!("table `{table}`");
    let wal_level: String = client.query_one("SHOW wal_level", &[]).await.map_err(|e| db.error(&what, &e))?.get(0);
    if wal_level != "logical" {
        return Err(db.refuse(
            &what,
            format!("`wal_level` is `{wal_level}`; CDC needs `wal_level = logical` (set it, then restart PostgreSQL)"),
        ));
    }
    let unnamed = match relation.replica_identity {
        Some('n') => Some("its replica identity is NOTHING"),
        Some('d') if relation.primary_key.is_empty() => Some("it has no primary key"),
        _ => None,
    };
    if let Some(why) = unnamed {
        return Err(db.refuse(
            &what,
            format!(
                "{why}, so its updates and deletes cannot be read; add a primary key, or run `ALTER TABLE {table} REPLICA IDENTITY FULL`"
            ),
        ));
    }
    Ok(())
}

/// Creates the publication of the table (a partitioned table's changes published as its
/// own), or adds the table to it.
pub async fn ensure_publication(
    context: &Context,
    client: &Client,
    publication: &str,
    relation: &Relation,
) -> Result<(), Error> {
    let db = &context.db;
    let table = &relation.name;
    let what = format!("publication `{publication}`");
    let found: Option<bool> = client
        .query_opt("SELECT pubviaroot FROM pg_publication WHERE pubname = $1", &[&publication])
        .await
        .map_err(|e| db.error(&what, &e))?
        .map(|row| row.get(0));
    let quoted = ident(publication);
    let Some(via_root) = found else {
        client
            .batch_execute(&format!(
                "CREATE PUBLICATION {quoted} FOR TABLE {} WITH (publish_via_partition_root = true)",
                relation.from
            ))
            .await
            .map_err(|e| db.error(&what, &e))?;
        return Ok(());
    };
    if relation.partitioned && !via_root {
        return Err(db.refuse(
            &what,
            format!(
                "`{table}` is partitioned and the publication names its changes by partition; run `ALTER PUBLICATION {quoted} SET (publish_via_partition_root = true)`"
            ),
        ));
    }
    let (schema, name) = table.split_once('.').unwrap_or(("public", table));
    let has = client
        .query_opt(
            "SELECT 1 FROM pg_publication_tables WHERE pubname = $1 AND schemaname = $2 AND tablename = $3",
            &[&publication, &schema, &name],
        )
        .await
        .map_err(|e| db.error(&what, &e))?
        .is_some();
    if !has {
        client
            .batch_execute(&format!("ALTER PUBLICATION {quoted} ADD TABLE {}", relation.from))
            .await
            .map_err(|e| db.error(&what, &e))?;
    }
    Ok(())
}

/// Where the slot stands once opened.
pub enum Opened {
    /// Created now: changes begin at its consistent point.
    Created { consistent: u64 },
    /// The table's slot, moved to what the table's log holds.
    Resumed,
}

/// Opens the source's slot: creates it when the table's log holds no position (a slot of
/// that name left by an attempt that committed nothing is dropped first, if it is this
/// source's), else checks it and moves it to the log's position.
pub async fn open(context: &Context, client: &Client, slot: &str, stream: Option<&Stream>) -> Result<Opened, Error> {
    let db = &context.db;
    let what = format!("slot `{slot}`");
    let found = client
        .query_opt(
            "SELECT confirmed_flush_lsn::text, wal_status, database::text, plugin::text, active \
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(|e| db.error(&what, &e))?;
    let found = found.map(|row| SlotRow {
        confirmed: row.get::<_, Option<String>>(0).as_deref().and_then(parse_lsn),
        status: row.get(1),
        database: row.get(2),
        plugin: row.get(3),
        active: row.get(4),
    });
    if let Some(row) = &found
        && (row.database.as_deref() != Some(db.dbname.as_str()) || row.plugin.as_deref() != Some("pgoutput"))
    {
        return Err(db.refuse(
            &what,
            format!(
                "a slot of that name exists for database `{}` ({}); it is not this source's: name another `slot`",
                row.database.as_deref().unwrap_or("none"),
                row.plugin.as_deref().unwrap_or("physical")
            ),
        ));
    }
    let Some(stream) = stream else {
        if let Some(row) = &found {
            if row.active {
                return Err(db.refuse(&what, "a slot of that name is in use by another session; name another `slot`"));
            }
            // No commit holds a position: the slot is from an attempt that landed nothing,
            // and its consistent point is not the table's.
            warn!(source = %context.name, slot = %slot, "dropping a slot no commit of the table refers to");
            client
                .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
                .await
                .map_err(|e| db.error(&format!("dropping {what}"), &e))?;
        }
        let consistent: String = client
            .query_one("SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')", &[&slot])
            .await
            .map_err(|e| db.error(&format!("creating {what}"), &e))?
            .get(0);
        let consistent = parse_lsn(&consistent).ok_or_else(|| db.fail(&what, format!("an LSN `{consistent}`")))?;
        info!(source = %context.name, slot = %slot, lsn = %lsn_text(consistent), "replication slot created");
        return Ok(Opened::Created { consistent });
    };
    let Some(row) = found else {
        return Err(lost(context, slot, "it no longer exists"));
    };
    if row.status.as_deref() == Some("lost") {
        return Err(lost(context, slot, "PostgreSQL removed WAL it still needed (`max_slot_wal_keep_size`)"));
    }
    let confirmed = row.confirmed.unwrap_or(0);
    if confirmed > stream.lsn {
        return Err(lost(
            context,
            slot,
            &format!(
                "it was moved to {} while the table's log holds changes up to {} (was the table restored, or the slot read by another consumer?)",
                lsn_text(confirmed),
                lsn_text(stream.lsn)
            ),
        ));
    }
    if confirmed < stream.lsn {
        // The table holds everything up to `stream.lsn`: the slot may let it go.
        client
            .execute(
                &format!(
                    "SELECT pg_replication_slot_advance({}, {}::pg_lsn)",
                    literal(slot),
                    literal(&lsn_text(stream.lsn))
                ),
                &[],
            )
            .await
            .map_err(|e| db.error(&format!("moving {what}"), &e))?;
    }
    Ok(Opened::Resumed)
}

struct SlotRow {
    confirmed: Option<u64>,
    status: Option<String>,
    database: Option<String>,
    plugin: Option<String>,
    active: bool,
}

/// The slot cannot give the changes the table needs: what to do about it.
fn lost(context: &Context, slot: &str, why: &str) -> Error {
    context.db.refuse(
        &format!("slot `{slot}`"),
        format!(
            "the replication slot the table's log refers to cannot be read from: {why}. Changes may be missing; `inlet resnapshot {}` starts over: a new slot and snapshot replace the rows of `{}`, and keys deleted meanwhile land as deletes",
            context.name,
            context.config.resolved_target.get_ref()
        ),
    )
}
