//! The connectors' error type.
//!
//! Every variant names what failed (a path, a URL, a queue) and says who has to act
//! ([`Error::kind`]) and whether trying again may help ([`Error::is_retryable`]); at the
//! engine's boundary it becomes a [`SourceError`] that keeps both. URLs in errors never
//! carry secrets: callers give them redacted.

use inlet_engine::ErrorKind;
use inlet_engine::source::SourceError;

/// What went wrong reading a source.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A local file or directory could not be listed, opened, moved or deleted.
    #[error("`{path}`: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("landing directory `{path}` does not exist")]
    MissingDirectory { path: String },
    /// An object store call failed.
    #[error("`{url}`: {source}")]
    ObjectStore {
        url: String,
        #[source]
        source: object_store::Error,
    },
    #[error("`{url}` was replaced since it was listed; it is read next run")]
    Replaced { url: String },
    /// A notification queue call failed; `user` when the queue does not exist or the
    /// credentials are refused (trying again does not help).
    #[error("queue `{queue}`: {message}")]
    Queue { queue: String, message: String, user: bool },
    /// A file's or a page's bytes cannot be decoded at all.
    #[error("{message}")]
    Decode { message: String },
    /// The source's configuration cannot be used (a bad URL, a secret not set).
    #[error("{message}")]
    Config { message: String },
    /// An HTTP request got a status that is not success, after any retries.
    #[error("`{method} {url}`: HTTP {status}{detail}")]
    Status { method: &'static str, url: String, status: u16, detail: String },
    /// An HTTP request got no response (connection, timeout), after any retries.
    #[error("`{method} {url}`: {message}")]
    Request { method: &'static str, url: String, message: String },
    /// An API answered in a way that cannot be followed (a loop of next links, a body the
    /// paginator needs that does not parse).
    #[error("`{url}`: {message}")]
    Api { url: String, message: String },
    /// Credentials were refused, or a token could not be had.
    #[error("`{url}`: {message}")]
    Auth { url: String, message: String },
    /// A PostgreSQL call failed. `database` is `host:port/database` (never credentials),
    /// `what` the table, slot or step; `sqlstate` the server's error code, when it sent one.
    #[error("postgres `{database}`: {what}: {message}")]
    Postgres { database: String, what: String, message: String, sqlstate: Option<String> },
    /// A bug or a broken invariant.
    #[error("internal: {0}")]
    Internal(String),
}

impl Error {
    /// The same error with `note` added to its message (where it has one).
    pub fn with_note(self, note: &str) -> Error {
        match self {
            Error::Api { url, message } => Error::Api { url, message: message + note },
            Error::Request { method, url, message } => Error::Request { method, url, message: message + note },
            Error::Status { method, url, status, detail } => {
                Error::Status { method, url, status, detail: detail + note }
            }
            Error::Auth { url, message } => Error::Auth { url, message: message + note },
            Error::Queue { queue, message, user } => Error::Queue { queue, message: message + note, user },
            Error::Config { message } => Error::Config { message: message + note },
            Error::Decode { message } => Error::Decode { message: message + note },
            Error::Internal(message) => Error::Internal(message + note),
            Error::Postgres { database, what, message, sqlstate } => {
                Error::Postgres { database, what, message: message + note, sqlstate }
            }
            other => other,
        }
    }

    /// A decoding failure naming where it happened.
    pub fn decode(message: impl Into<String>) -> SourceError {
        Error::Decode { message: message.into() }.into()
    }

    /// Who has to act on this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Decode { .. } | Error::Config { .. } | Error::Auth { .. } => ErrorKind::User,
            Error::Status { status, .. } if is_client_error(*status) => ErrorKind::User,
            Error::Queue { user: true, .. } => ErrorKind::User,
            Error::Postgres { sqlstate, .. } if postgres_user_error(sqlstate.as_deref()) => ErrorKind::User,
            Error::Postgres { .. } => ErrorKind::External,
            Error::ObjectStore {
                source: object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. },
                ..
            } => ErrorKind::User,
            Error::Io { .. }
            | Error::MissingDirectory { .. }
            | Error::ObjectStore { .. }
            | Error::Replaced { .. }
            | Error::Queue { .. }
            | Error::Status { .. }
            | Error::Request { .. }
            | Error::Api { .. } => ErrorKind::External,
            Error::Internal(_) => ErrorKind::Internal,
        }
    }

    /// Whether running the same thing again may succeed without a change by the user.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Io { source, .. } => source.kind() != std::io::ErrorKind::PermissionDenied,
            Error::ObjectStore { source, .. } => !matches!(
                source,
                object_store::Error::NotFound { .. }
                    | object_store::Error::InvalidPath { .. }
                    | object_store::Error::PermissionDenied { .. }
                    | object_store::Error::Unauthenticated { .. }
            ),
            Error::Queue { user, .. } => !user,
            Error::MissingDirectory { .. } | Error::Replaced { .. } | Error::Request { .. } => true,
            Error::Status { status, .. } => !is_client_error(*status),
            Error::Postgres { sqlstate, .. } => postgres_retryable(sqlstate.as_deref()),
            Error::Decode { .. }
            | Error::Config { .. }
            | Error::Api { .. }
            | Error::Auth { .. }
            | Error::Internal(_) => false,
        }
    }
}

/// SQLSTATE classes the user fixes: credentials (28), a missing database (3D), names,
/// syntax and privileges (42), data (22), features (0A), prerequisites such as `wal_level`
/// (55000) and configuration limits (53400).
fn postgres_user_error(sqlstate: Option<&str>) -> bool {
    let Some(code) = sqlstate else { return false };
    matches!(&code[..2.min(code.len())], "28" | "3D" | "42" | "22" | "0A") || code == "55000" || code == "53400"
}

/// Connection failures (08), shutdowns and cancels (57), resources (53), conflicts (40), an
/// object in use (55006), and no code at all (the connection broke): worth another try.
fn postgres_retryable(sqlstate: Option<&str>) -> bool {
    match sqlstate {
        None => true,
        Some(code) => {
            (matches!(&code[..2.min(code.len())], "08" | "57" | "53" | "40") && code != "53400") || code == "55006"
        }
    }
}

/// 4xx but 408 (timeout) and 429 (too many requests): the request is wrong, not the server.
fn is_client_error(status: u16) -> bool {
    (400..500).contains(&status) && status != 408 && status != 429
}

impl From<Error> for SourceError {
    fn from(err: Error) -> Self {
        SourceError::new(err.kind(), err.is_retryable(), err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u16) -> Error {
        Error::Status { method: "GET", url: "http://x/".into(), status: code, detail: String::new() }
    }

    #[test]
    fn kinds_and_retries() {
        assert_eq!((status(404).kind(), status(404).is_retryable()), (ErrorKind::User, false));
        assert_eq!((status(429).kind(), status(429).is_retryable()), (ErrorKind::External, true));
        assert_eq!((status(408).kind(), status(408).is_retryable()), (ErrorKind::External, true));
        assert_eq!((status(503).kind(), status(503).is_retryable()), (ErrorKind::External, true));
        let timeout = Error::Request { method: "GET", url: "u".into(), message: "timed out".into() };
        assert!(timeout.is_retryable());
        let looped = Error::Api { url: "u".into(), message: "the next link repeats".into() };
        assert_eq!((looped.kind(), looped.is_retryable()), (ErrorKind::External, false));
        let source: SourceError = Error::decode("bad gzip");
        assert_eq!((source.kind(), source.is_retryable()), (ErrorKind::User, false));
        assert_eq!(source.to_string(), "bad gzip");
    }
}
