//! Connecting to PostgreSQL, and its errors as the connectors' [`Error`].
//!
//! The URL comes from the pipeline file or `${env:NAME}`; it is never logged and errors name
//! only `host:port/database`. Every session reads in UTC with ISO dates, so the text of a
//! cursor value is the same from run to run.

use std::str::FromStr;

use inlet_engine::config::env_reference;
use inlet_engine::run::Environment;
use tokio_postgres::{Client, NoTls};
use tracing::warn;

use crate::Error;

/// Where a source connects, and how it names the database in messages.
#[derive(Clone)]
pub struct Database {
    config: tokio_postgres::Config,
    /// `host:port/database`.
    pub name: String,
    /// The database's name.
    pub dbname: String,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database").field("name", &self.name).finish()
    }
}

impl Database {
    /// The database `url` names (`${env:NAME}` read from `env`).
    pub fn new(source: &str, url: &str, env: &Environment) -> Result<Database, Error> {
        let url = match env_reference(url) {
            Some(name) => env.get(name).ok_or_else(|| Error::Config {
                message: format!("source `{source}`: the environment variable `{name}` (its `url`) is not set"),
            })?,
            None => url,
        };
        // The message of a parse error can quote the URL: it is not passed on.
        let config = tokio_postgres::Config::from_str(url).map_err(|_| Error::Config {
            message: format!("source `{source}`: its `url` is not a PostgreSQL connection URL"),
        })?;
        if config.get_ssl_mode() == tokio_postgres::config::SslMode::Require {
            return Err(Error::Config {
                message: format!(
                    "source `{source}`: `sslmode=require` is not supported yet; connect through a TLS tunnel or use `sslmode=prefer`"
                ),
            });
        }
        let host = config
            .get_hosts()
            .first()
            .map(|h| match h {
                tokio_postgres::config::Host::Tcp(name) => name.clone(),
                tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
            })
            .unwrap_or_else(|| "localhost".to_owned());
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let database = config.get_dbname().or(config.get_user()).unwrap_or("postgres");
        Ok(Database { name: format!("{host}:{port}/{database}"), dbname: database.to_owned(), config })
    }

    /// A new session, in UTC with ISO dates.
    pub async fn connect(&self) -> Result<Client, Error> {
        let (client, connection) = self.config.connect(NoTls).await.map_err(|e| self.error("connecting", &e))?;
        let name = self.name.clone();
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                warn!(database = %name, error = %error, "postgres connection ended");
            }
        });
        client
            .batch_execute(
                "SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'; SET IntervalStyle = 'iso_8601'; \
                 SET extra_float_digits = 3; SET application_name = 'inlet'",
            )
            .await
            .map_err(|e| self.error("setting up the session", &e))?;
        Ok(client)
    }

    /// A failed call as an error naming the database and `what` was being done.
    pub fn error(&self, what: &str, error: &tokio_postgres::Error) -> Error {
        let (message, sqlstate) = match error.as_db_error() {
            Some(db) => {
                let mut message = db.message().to_owned();
                if let Some(detail) = db.detail() {
                    message.push_str(&format!(" ({detail})"));
                }
                if let Some(hint) = db.hint() {
                    message.push_str(&format!("; hint: {hint}"));
                }
                (message, Some(db.code().code().to_owned()))
            }
            None => (error.to_string(), error.code().map(|c| c.code().to_owned())),
        };
        Error::Postgres { database: self.name.clone(), what: what.to_owned(), message, sqlstate }
    }

    /// Something PostgreSQL sent that cannot be read (a stream that does not parse): the
    /// same again next time, so not retried.
    pub fn fail(&self, what: &str, message: impl Into<String>) -> Error {
        Error::Postgres {
            database: self.name.clone(),
            what: what.to_owned(),
            message: message.into(),
            // "internal_error": external, not retried.
            sqlstate: Some("XX000".to_owned()),
        }
    }

    /// A problem the user must fix (a table without a key, a slot that was lost).
    pub fn refuse(&self, what: &str, message: impl Into<String>) -> Error {
        Error::Postgres {
            database: self.name.clone(),
            what: what.to_owned(),
            message: message.into(),
            // "object not in prerequisite state": a user error, not retried.
            sqlstate: Some("55000".to_owned()),
        }
    }
}

/// `text` as an SQL string literal.
pub fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// `name` as an SQL identifier.
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}
