//! A database of its own for each service of each test: a SQLite file, or a new PostgreSQL
//! database on a server the tests share, dropped again when the test is done.

use anyhow::Context as _;
use sqlx::Connection;
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Runs an async test body once per storage backend: `on_both_backends!(happy_path)` makes the
/// tests `happy_path::sqlite` and `happy_path::postgres` from `async fn happy_path(Backend)`.
/// The body's future is boxed: a test that starts a whole system nests deep enough that computing
/// the layout of the test's own future in one piece can overflow rustc's query depth limit
/// (it did for the webhook tests, depending on the order rustc happened to evaluate queries in).
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                Box::pin(super::$name($crate::Backend::Sqlite)).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                Box::pin(super::$name($crate::Backend::Postgres)).await
            }
        }
    )*};
}

/// The admin connection tests create their PostgreSQL databases through: `TEST_POSTGRES_URL`,
/// else the local server's `postgres` database.
pub fn admin_url() -> String {
    std::env::var("TEST_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A fresh database.
pub struct TestDb {
    pub url: String,
    /// The database's name and its server's admin URL, to drop it.
    postgres: Option<(String, String)>,
    _dir: Option<tempfile::TempDir>,
}

impl TestDb {
    /// A SQLite file in a temporary directory, or a new database on [`admin_url`]'s server.
    pub async fn new(backend: Backend, label: &str) -> Self {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temporary directory");
                Self {
                    url: sqlite_url(dir.path(), label),
                    postgres: None,
                    _dir: Some(dir),
                }
            }
            Backend::Postgres => {
                let admin = admin_url();
                Self::postgres_on(&admin, label)
                    .await
                    .unwrap_or_else(|e| panic!("PostgreSQL at {admin} is needed for the postgres tests: {e:#}"))
            }
        }
    }

    /// `<dir>/<label>.db`, kept when the test is done (the fault suite leaves it for reading).
    pub fn sqlite_in(dir: &Path, label: &str) -> Self {
        Self {
            url: sqlite_url(dir, label),
            postgres: None,
            _dir: None,
        }
    }

    /// A new database on the server of `admin_url` (which names a database to connect to).
    pub async fn postgres_on(admin_url: &str, label: &str) -> anyhow::Result<Self> {
        sqlx::any::install_default_drivers();
        let name = format!("saga_test_{label}_{}", uuid::Uuid::new_v4().simple()).replace('-', "_");
        let mut admin = sqlx::AnyConnection::connect(admin_url)
            .await
            .with_context(|| format!("cannot connect to {admin_url}"))?;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .with_context(|| format!("cannot create database {name}"))?;
        let base = admin_url.rsplit_once('/').map(|(b, _)| b).unwrap_or(admin_url);
        Ok(Self {
            url: format!("{base}/{name}"),
            postgres: Some((name, admin_url.to_owned())),
            _dir: None,
        })
    }
}

fn sqlite_url(dir: &Path, label: &str) -> String {
    format!("sqlite:{}/{label}.db", dir.display())
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some((name, admin)) = self.postgres.take() else {
            return;
        };
        // Drop runs outside any runtime we may block on: clean up on a thread of its own.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                return;
            };
            rt.block_on(async {
                if let Ok(mut conn) = sqlx::AnyConnection::connect(&admin).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut conn)
                        .await;
                }
            });
        })
        .join();
    }
}
