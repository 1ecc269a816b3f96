//! What the catalog says of a table: its columns and their types, its primary key, its
//! replica identity. Read when a source starts, so an unsupported type or a table without a
//! key is refused before anything is read.

use inlet_engine::config::QualifiedName;
use tokio_postgres::Client;
use tokio_postgres::types::{Kind, Type};

use super::connect::{Database, ident};
use super::types::{Column, PgType};
use crate::Error;

/// A table (or query) as the source reads it.
#[derive(Debug, Clone)]
pub struct Relation {
    /// `schema.table`, or `query` for a query.
    pub name: String,
    /// The `FROM` item: the quoted table, or the query in parentheses.
    pub from: String,
    pub columns: Vec<Column>,
    /// Columns naming a row, in key order (empty: none known).
    pub primary_key: Vec<String>,
    /// Whether the key is the table's primary key (never NULL), not one configured.
    pub key_from_catalog: bool,
    /// `d` (default: the primary key), `f` (full), `i` (an index), `n` (nothing); tables only.
    pub replica_identity: Option<char>,
    /// A partitioned table (its rows are in its partitions).
    pub partitioned: bool,
}

impl Relation {
    /// A table's columns (stored generated ones only with `generated`), key and replica
    /// identity.
    pub async fn table(
        db: &Database,
        client: &Client,
        table: &QualifiedName,
        primary_key: &[String],
        generated: bool,
    ) -> Result<Relation, Error> {
        let name = table.to_string();
        let what = format!("table `{name}`");
        let quoted = format!("{}.{}", ident(&table.schema), ident(&table.name));
        let found = client
            .query_opt(
                "SELECT c.relreplident::text, c.relkind::text, \
                   (SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum) FROM pg_attribute a \
                    WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND ($3 OR a.attgenerated = '')) \
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p', 'v', 'm', 'f')",
                &[&table.schema, &table.name, &generated],
            )
            .await
            .map_err(|e| db.error(&what, &e))?;
        let Some(row) = found else {
            return Err(db.refuse(&what, "no such table (or no privilege to see it)"));
        };
        let identity: String = row.get(0);
        let kind: String = row.get(1);
        let list: Option<String> = row.get(2);
        let Some(list) = list else {
            return Err(db.refuse(&what, "it has no columns to read"));
        };
        let columns = columns(db, client, &format!("SELECT {list} FROM {quoted}"), &what).await?;
        let key_from_catalog = primary_key.is_empty();
        let primary_key = if key_from_catalog {
            client
                .query(
                    "SELECT a.attname::text FROM pg_index i \
                     JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
                     WHERE i.indrelid = $1::text::regclass AND i.indisprimary \
                     ORDER BY array_position(i.indkey::int2[], a.attnum)",
                    &[&quoted],
                )
                .await
                .map_err(|e| db.error(&what, &e))?
                .iter()
                .map(|r| r.get(0))
                .collect()
        } else {
            primary_key.to_vec()
        };
        let relation = Relation {
            name,
            from: quoted,
            columns,
            primary_key,
            replica_identity: identity.chars().next(),
            partitioned: kind == "p",
            key_from_catalog,
        };
        relation.check_key(db)?;
        Ok(relation)
    }

    /// A query's columns; `primary_key` as configured.
    pub async fn query(db: &Database, client: &Client, query: &str, primary_key: &[String]) -> Result<Relation, Error> {
        let from = format!("({query}) AS q");
        let columns = columns(db, client, &format!("SELECT * FROM {from}"), "the query").await?;
        let relation = Relation {
            name: "query".to_owned(),
            from,
            columns,
            primary_key: primary_key.to_vec(),
            replica_identity: None,
            partitioned: false,
            key_from_catalog: false,
        };
        relation.check_key(db)?;
        Ok(relation)
    }

    fn check_key(&self, db: &Database) -> Result<(), Error> {
        for key in &self.primary_key {
            if !self.columns.iter().any(|c| &c.name == key) {
                return Err(
                    db.refuse(&format!("`{}`", self.name), format!("the key column `{key}` is not one of its columns"))
                );
            }
        }
        Ok(())
    }

    /// The column named `name`.
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }
}

/// The columns `select` returns, each of a type inlet reads (or an error naming it).
async fn columns(db: &Database, client: &Client, select: &str, what: &str) -> Result<Vec<Column>, Error> {
    let statement = client.prepare(select).await.map_err(|e| db.error(what, &e))?;
    let columns: Vec<Column> = statement
        .columns()
        .iter()
        .map(|column| {
            let ty = resolve(column.type_(), column.type_modifier()).ok_or_else(|| {
                db.refuse(
                    what,
                    format!(
                        "column `{}` is of type `{}`, which inlet does not read; select it cast to text in a `query`",
                        column.name(),
                        column.type_().name()
                    ),
                )
            })?;
            Ok(Column {
                name: column.name().to_owned(),
                ty,
                oid: column.type_().oid(),
                type_name: column.type_().name().to_owned(),
            })
        })
        .collect::<Result<_, Error>>()?;
    // `money` is sent in the smallest unit of `lc_monetary`'s currency; read as cents only.
    if let Some(money) = columns.iter().find(|c| c.ty == PgType::Money) {
        let scale: i32 =
            client.query_one("SELECT scale('1'::money::numeric)", &[]).await.map_err(|e| db.error(what, &e))?.get(0);
        if scale != 2 {
            return Err(db.refuse(
                what,
                format!(
                    "column `{}` is `money` in a currency with {scale} decimals (`lc_monetary`); inlet reads two: select it as `{}::numeric` in a `query`",
                    money.name, money.name
                ),
            ));
        }
    }
    Ok(columns)
}

/// How inlet reads a type: domains as their base, enums as text, arrays by their element.
pub fn resolve(ty: &Type, typmod: i32) -> Option<PgType> {
    match ty.kind() {
        Kind::Simple => PgType::builtin(ty.oid(), ty.name(), typmod),
        Kind::Enum(_) => Some(PgType::Text),
        Kind::Domain(base) => resolve(base, typmod),
        Kind::Array(element) => resolve(element, -1).map(|e| PgType::Array(Box::new(e))),
        _ => None,
    }
}
