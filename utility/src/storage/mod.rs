//! Storage: one database per service through sqlx's `Any` driver, so the same queries run on an
//! embedded SQLite file (the local default) and on PostgreSQL (production). Queries stick to
//! portable SQL: `$n` placeholders, TEXT ids and timestamps, BIGINT numbers, `ON CONFLICT`.
//! [`retention`] keeps the bookkeeping tables bounded.

pub mod retention;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::{MigrateError, Migrator};
use sqlx::{AnyPool, ConnectOptions, Executor};
use std::str::FromStr;
use std::time::Duration;

pub use sqlx::AnyConnection;

/// Timestamps are stored as RFC 3339 text with millisecond precision in UTC, which sorts
/// lexically in both SQLite and PostgreSQL.
pub fn timestamp(at: chrono::DateTime<chrono::Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The current time in the stored format.
pub fn now() -> String {
    timestamp(chrono::Utc::now())
}

/// The stored form of "now minus `age`": rows stamped before it are older than `age`.
pub fn cutoff(age: Duration) -> String {
    let age = chrono::Duration::from_std(age).unwrap_or(chrono::Duration::MAX);
    timestamp(
        chrono::Utc::now()
            .checked_sub_signed(age)
            .unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC),
    )
}

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
    #[error("cannot set up the application role: {0}")]
    AppRole(String),
}

pub fn is_sqlite(url: &str) -> bool {
    url.starts_with("sqlite:")
}

/// A service's two pools on one database. HTTP handlers use `http`; the consumer, the outbox
/// relay and the sweepers use `background`. However hard the HTTP side is pressed, a message's
/// transaction never waits for a connection behind requests (which would cost it a receive, and
/// in the end a trip to the DLQ).
#[derive(Debug, Clone)]
pub struct Pools {
    pub http: AnyPool,
    pub background: AnyPool,
}

/// Connections of the HTTP pool on PostgreSQL (SQLite gets one per pool).
const HTTP_CONNECTIONS: u32 = 8;
/// Connections of the background pool on PostgreSQL beside one per batch the consumer may have in
/// flight: the relay's claims and marks, and the sweepers.
const BACKGROUND_EXTRA_CONNECTIONS: u32 = 3;

impl Pools {
    /// Opens both pools and applies the migrations. On PostgreSQL every statement is bounded by
    /// `statement_timeout`, so a hung query fails (and its message is retried) instead of holding
    /// a connection, and a message, forever.
    /// `batches`: how many batch transactions the consumer may run at once.
    pub async fn open(
        url: &str,
        service_migrations: Migrator,
        statement_timeout: Duration,
        batches: usize,
    ) -> Result<Self, DbError> {
        // Migrations may build indexes on large tables: they run on a connection of their own,
        // without the statement timeout, before the pools open.
        // Only when some are pending: an application role without DDL rights (`migrate_as_owner`)
        // starts on a database its owner migrated.
        let setup = open_pool(url, 1, None).await?;
        let migrated = if pending(&setup, &service_migrations).await {
            migrate(&setup, service_migrations).await
        } else {
            Ok(())
        };
        setup.close().await;
        migrated?;
        let http = open_pool(url, HTTP_CONNECTIONS, Some(statement_timeout)).await?;
        let background_connections = u32::try_from(batches)
            .unwrap_or(u32::MAX)
            .saturating_add(BACKGROUND_EXTRA_CONNECTIONS);
        let background = open_pool(url, background_connections, Some(statement_timeout)).await?;
        Ok(Self { http, background })
    }
}

/// Opens one pool and applies the shared migrations (the outbox and processed-message tables:
/// versions below 100), then the service's own (`sqlx::migrate!()`, versions from 100): what
/// tests and tools use. Services open [`Pools`].
pub async fn connect(url: &str, service_migrations: Migrator) -> Result<AnyPool, DbError> {
    let pool = open_pool(url, HTTP_CONNECTIONS, None).await?;
    if pending(&pool, &service_migrations).await {
        migrate(&pool, service_migrations).await?;
    }
    Ok(pool)
}

/// SQLite runs in WAL mode with `synchronous = FULL`: a commit that the consumer acknowledges by
/// deleting its message, or that the gateway acknowledges with a 202, survives a power loss.
/// Each SQLite pool has a single connection (SQLite has one writer at a time anyway); the two
/// pools of a service wait for each other's writes through `busy_timeout`, and every write
/// transaction starts with a write, so none has to upgrade a read lock. The file and its
/// directory are created on first run.
async fn open_pool(url: &str, pg_connections: u32, statement_timeout: Option<Duration>) -> Result<AnyPool, DbError> {
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
    let timeout_ms = statement_timeout.map(|t| t.as_millis());
    AnyPoolOptions::new()
        .max_connections(if sqlite { 1 } else { pg_connections })
        .acquire_timeout(Duration::from_secs(10))
        .after_connect(move |conn, _meta| {
            Box::pin(async move {
                if sqlite {
                    conn.execute("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 5000;")
                        .await?;
                } else if let Some(ms) = timeout_ms {
                    conn.execute(format!("SET statement_timeout = {ms}").as_str()).await?;
                }
                Ok(())
            })
        })
        .connect_with(options)
        .await
        .map_err(|source| DbError::Connect { url: redact(&url), source })
}

async fn migrate(pool: &AnyPool, mut service: Migrator) -> Result<(), MigrateError> {
    // Two migrators share one `_sqlx_migrations` table, so each ignores the other's versions.
    let mut shared = sqlx::migrate!("./migrations");
    shared.set_ignore_missing(true).run(pool).await?;
    service.set_ignore_missing(true).run(pool).await
}

/// Whether a shared or service migration is not applied yet (also when the bookkeeping table
/// cannot be read: then migrating says why).
async fn pending(pool: &AnyPool, service: &Migrator) -> bool {
    let Ok(applied) = sqlx::query_scalar::<_, i64>("SELECT version FROM _sqlx_migrations WHERE success")
        .fetch_all(pool)
        .await
    else {
        return true;
    };
    let shared = sqlx::migrate!("./migrations");
    shared
        .iter()
        .chain(service.iter())
        .filter(|m| !m.migration_type.is_down_migration())
        .any(|m| !applied.contains(&m.version))
}

/// `<service> migrate` (decision 0043): applies the migrations as the database's owner
/// (`owner_url`), then, on PostgreSQL, makes the user of `app_url` an application role: created
/// if missing (login, its password from the URL, nothing more), allowed to connect, to use the
/// schema and to read and write the rows of every table and sequence it holds, and no more:
/// the tables belong to the owner, so the role can neither create, alter nor drop one. Run on
/// every deployment, after each migration, so new tables are granted too. The same user in
/// both URLs (local runs) is left as it is; SQLite has no roles.
pub async fn migrate_as_owner(owner_url: &str, app_url: &str, service_migrations: Migrator) -> Result<(), DbError> {
    let pool = open_pool(owner_url, 1, None).await?;
    let done = async {
        migrate(&pool, service_migrations).await?;
        if is_sqlite(owner_url) {
            return Ok(());
        }
        let (owner, _) = credentials(owner_url)?;
        let (role, password) = credentials(app_url)?;
        if role == owner {
            tracing::warn!(%role, "DATABASE_URL names the owner: the service runs with the right to change the schema");
            return Ok(());
        }
        grant_app_role(&pool, &role, &password)
            .await
            .map_err(|e| DbError::AppRole(format!("{role}: {e}")))
    }
    .await;
    pool.close().await;
    done
}

/// The user and password of a PostgreSQL URL, percent-decoded.
fn credentials(url: &str) -> Result<(String, String), DbError> {
    let parsed = url::Url::parse(url).map_err(|e| DbError::AppRole(format!("{}: {e}", redact(url))))?;
    let decode = |text: &str| {
        url::form_urlencoded::parse(format!("x={text}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    let user = decode(&parsed.username().replace('+', "%2B"));
    if user.is_empty() {
        return Err(DbError::AppRole(format!("{} names no user", redact(url))));
    }
    Ok((user, decode(&parsed.password().unwrap_or_default().replace('+', "%2B"))))
}

async fn grant_app_role(pool: &AnyPool, role: &str, password: &str) -> Result<(), sqlx::Error> {
    // Utility statements take no parameters: `format` quotes the name (%I) and the password (%L).
    let statement = async |template: &str| -> Result<(), sqlx::Error> {
        let sql: String = sqlx::query_scalar(&format!("SELECT format('{template}', $1, $2)"))
            .bind(role)
            .bind(password)
            .fetch_one(pool)
            .await?;
        sqlx::query(&sql).execute(pool).await.map(|_| ())
    };
    let exists: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM pg_roles WHERE rolname = $1")
        .bind(role)
        .fetch_one(pool)
        .await?;
    if exists == 0 {
        // Another instance migrating at the same moment may create it first: the ALTER below
        // then applies to that one.
        if let Err(err) = statement("CREATE ROLE %I LOGIN PASSWORD %L").await {
            tracing::debug!(error = %err, "role not created here");
        }
    }
    statement("ALTER ROLE %I WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT PASSWORD %L").await?;
    let connect: String =
        sqlx::query_scalar("SELECT format('GRANT CONNECT ON DATABASE %I TO %I', current_database(), $1)")
            .bind(role)
            .fetch_one(pool)
            .await?;
    sqlx::query(&connect).execute(pool).await?;
    // PostgreSQL before 15 lets everyone create in `public`.
    sqlx::query("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
        .execute(pool)
        .await?;
    statement("GRANT USAGE ON SCHEMA public TO %I").await?;
    statement("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO %I").await?;
    statement("GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA public TO %I").await
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

/// True when the database could not be reached or cannot serve right now (down, restarting,
/// pool exhausted, SQLite busy): worth a retry later, unlike an error in the statement itself.
///
/// Besides the pool's and the socket's own errors, these server answers count: PostgreSQL's
/// SQLSTATE classes 08 (connection exception), 53 (insufficient resources, e.g. too many
/// connections) and 57 (operator intervention: shutting down, starting up), and SQLite's BUSY and
/// LOCKED result codes (their extended codes share the low byte).
pub fn is_unavailable(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) | sqlx::Error::Tls(_) => true,
        sqlx::Error::Database(db) => {
            if let Some(pg) = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
                unavailable_sqlstate(pg.code())
            } else if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
                db.code()
                    .and_then(|code| code.parse::<u32>().ok())
                    .is_some_and(unavailable_sqlite)
            } else {
                false
            }
        }
        _ => false,
    }
}

fn unavailable_sqlstate(code: &str) -> bool {
    ["08", "53", "57"].iter().any(|class| code.starts_with(class))
}

/// BUSY and LOCKED, with their extended codes (which keep the primary code in the low byte).
fn unavailable_sqlite(code: u32) -> bool {
    matches!(code & 0xff, 5 | 6)
}

/// True when the error is a unique-constraint violation (both backends).
pub fn is_unique_violation(err: &sqlx::Error) -> bool {
    err.as_database_error().is_some_and(|e| e.is_unique_violation())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_answers_that_say_try_later_are_unavailability() {
        // PostgreSQL: admin shutdown, cannot connect now, too many connections, connection failure.
        for code in ["57P01", "57P03", "53300", "08006"] {
            assert!(unavailable_sqlstate(code), "{code}");
        }
        // Unique violation, syntax error: the statement's own fault.
        for code in ["23505", "42601"] {
            assert!(!unavailable_sqlstate(code), "{code}");
        }
        // SQLite: BUSY, LOCKED, BUSY_SNAPSHOT (517); not CONSTRAINT (19) or CONSTRAINT_UNIQUE (2067).
        for code in [5, 6, 517] {
            assert!(unavailable_sqlite(code), "{code}");
        }
        for code in [19, 2067, 1] {
            assert!(!unavailable_sqlite(code), "{code}");
        }
        assert!(is_unavailable(&sqlx::Error::PoolTimedOut));
        assert!(!is_unavailable(&sqlx::Error::RowNotFound));
    }

    #[test]
    fn cutoffs_are_in_the_past_and_sort_like_timestamps() {
        let now = now();
        let cut = cutoff(Duration::from_secs(60));
        assert!(cut < now, "{cut} !< {now}");
        assert_eq!(cut.len(), now.len());
        assert!(cutoff(Duration::MAX) < cut);
    }

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
