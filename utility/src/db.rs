//! Storage: one database per service through sqlx's `Any` driver, so the same queries run on an
//! embedded SQLite file (the local default) and on PostgreSQL (production). Queries stick to
//! portable SQL: `$n` placeholders, TEXT ids and timestamps, BIGINT numbers, `ON CONFLICT`.

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::{MigrateError, Migrator};
use sqlx::{AnyPool, ConnectOptions, Executor};
use std::str::FromStr;
use std::time::Duration;

pub use sqlx::AnyConnection;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("cannot open database {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("cannot create directory for SQLite file {path}: {source}")]
    Directory {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("database migration failed: {0}")]
    Migrate(#[from] MigrateError),
}

pub fn is_sqlite(url: &str) -> bool {
    url.starts_with("sqlite:")
}

/// Opens the pool and applies the shared migrations (the outbox and processed-message tables,
/// versions below 100), then the service's own (`sqlx::migrate!()`, versions from 100).
///
/// SQLite runs in WAL mode with `synchronous = FULL`: a commit that the consumer acknowledges by
/// deleting its message, or that the gateway acknowledges with a 202, survives a power loss.
/// SQLite gets a single connection: one writer at a time is how SQLite works anyway, and a single
/// connection avoids "database is locked" errors between the consumer, the relay and the API.
/// The file and its directory are created on first run.
pub async fn connect(url: &str, service_migrations: Migrator) -> Result<AnyPool, DbError> {
    sqlx::any::install_default_drivers();
    let url = prepare_url(url)?;
    let options = AnyConnectOptions::from_str(&url)
        .map_err(|source| DbError::Connect {
            url: redact(&url),
            source,
        })?
        .log_statements(tracing::log::LevelFilter::Trace)
        .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_secs(1));
    let sqlite = is_sqlite(&url);
    let pool = AnyPoolOptions::new()
        .max_connections(if sqlite { 1 } else { 8 })
        .acquire_timeout(Duration::from_secs(10))
        .after_connect(move |conn, _meta| {
            Box::pin(async move {
                if sqlite {
                    conn.execute("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 5000;")
                        .await?;
                }
                Ok(())
            })
        })
        .connect_with(options)
        .await
        .map_err(|source| DbError::Connect { url: redact(&url), source })?;
    migrate(&pool, service_migrations).await?;
    Ok(pool)
}

async fn migrate(pool: &AnyPool, mut service: Migrator) -> Result<(), MigrateError> {
    // Two migrators share one `_sqlx_migrations` table, so each ignores the other's versions.
    let mut shared = sqlx::migrate!("./migrations");
    shared.set_ignore_missing(true).run(pool).await?;
    service.set_ignore_missing(true).run(pool).await
}

/// Adds `mode=rwc` to SQLite URLs (create the file if missing) and creates the file's directory.
fn prepare_url(url: &str) -> Result<String, DbError> {
    if !is_sqlite(url) {
        return Ok(url.to_owned());
    }
    let path = url
        .trim_start_matches("sqlite:")
        .trim_start_matches("//")
        .split('?')
        .next()
        .unwrap_or_default();
    if let Some(parent) = std::path::Path::new(path)
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
    {
        std::fs::create_dir_all(parent).map_err(|source| DbError::Directory {
            path: path.to_owned(),
            source,
        })?;
    }
    Ok(if url.contains("mode=") {
        url.to_owned()
    } else if url.contains('?') {
        format!("{url}&mode=rwc")
    } else {
        format!("{url}?mode=rwc")
    })
}

/// The URL without its password, for error messages and logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// True when the database could not be reached at all (down, pool exhausted): worth a retry later,
/// unlike an error in the statement itself.
pub fn is_unavailable(err: &sqlx::Error) -> bool {
    matches!(
        err,
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) | sqlx::Error::Tls(_)
    )
}

/// True when the error is a unique-constraint violation (both backends).
pub fn is_unique_violation(err: &sqlx::Error) -> bool {
    err.as_database_error().is_some_and(|e| e.is_unique_violation())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("postgres://app:s3cret@db:5432/x"),
            "postgres://app:***@db:5432/x"
        );
        assert_eq!(redact("postgres://app@db/x"), "postgres://app@db/x");
        assert_eq!(redact("sqlite:data/x.db"), "sqlite:data/x.db");
    }

    #[test]
    fn sqlite_urls_create_their_file() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite:{}/sub/x.db", dir.path().display());
        assert_eq!(prepare_url(&url).unwrap(), format!("{url}?mode=rwc"));
        assert!(dir.path().join("sub").is_dir());
        assert_eq!(prepare_url("sqlite:x.db?mode=ro").unwrap(), "sqlite:x.db?mode=ro");
    }
}
