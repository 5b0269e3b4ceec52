//! The server DATABASE_URL points at (`make test` starts a local one with
//! pg_cron) and databases on it: each test gets its own [`TestDb`], dropped
//! when the test ends; tests that need pg_cron share cron.database_name as a
//! [`CronDb`] and take turns. Reading them back.

use std::time::{Duration, Instant};

use token_janitor::DatabaseUrl;
use token_janitor::operator::migrate;
use tokio_postgres::Client;

use super::no_schedule;

/// The server under test.
pub fn server() -> DatabaseUrl {
    let url = std::env::var("DATABASE_URL").expect(
        "DATABASE_URL is not set: run the tests with `make test`, or point DATABASE_URL at a \
         PostgreSQL 15 server with pg_cron preloaded",
    );
    DatabaseUrl::parse(&url).expect("DATABASE_URL parses")
}

/// A database of its own for one test, dropped when it goes out of scope.
pub struct TestDb {
    pub url: DatabaseUrl,
    pub client: Client,
    name: String,
}

impl TestDb {
    /// An empty database.
    pub async fn empty() -> Self {
        let name = format!("tj_test_{}", uuid::Uuid::new_v4().simple());
        let admin = server().with_dbname("postgres").connect().await.unwrap();
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        let url = server().with_dbname(&name);
        let client = url.connect().await.unwrap();
        Self { url, client, name }
    }

    /// A database with the schema installed (no pg_cron: it is not
    /// cron.database_name).
    pub async fn migrated() -> Self {
        let mut db = Self::empty().await;
        migrate(&mut db.client, &no_schedule()).await.unwrap();
        db
    }

    /// Another connection to this database.
    pub async fn connect(&self) -> Client {
        self.url.connect().await.unwrap()
    }

    /// A connection to this database without token-janitor's pinned
    /// search_path: the database's and the role's settings apply, as in an
    /// application's own session or a pg_cron job's.
    pub async fn connect_unpinned(&self) -> Client {
        connect_config(&self.unpinned_config(None)).await
    }

    /// The driver configuration [`TestDb::connect_unpinned`] uses (as
    /// `user` when given): no startup options, so the database's and the
    /// role's settings apply. For a connection as another role, or a pool
    /// an application builds itself.
    pub fn unpinned_config(&self, user: Option<&str>) -> tokio_postgres::Config {
        let mut config: tokio_postgres::Config = std::env::var("DATABASE_URL")
            .unwrap()
            .parse()
            .expect("DATABASE_URL parses");
        config.dbname(&self.name);
        if let Some(user) = user {
            config.user(user);
        }
        config
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

/// One connection with `config`, its I/O on a spawned task.
pub async fn connect_config(config: &tokio_postgres::Config) -> Client {
    let (client, connection) = config.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    client
}

impl Drop for TestDb {
    fn drop(&mut self) {
        execute_detached(
            server().with_dbname("postgres"),
            format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
    }
}

/// Exclusive use of cron.database_name (the DATABASE_URL database), reset to
/// an empty state: no auth schema, no migration history, no pg_cron. The
/// turn-taking lock lives in the `postgres` database so that waiting for it
/// holds no snapshot in this one (CREATE INDEX CONCURRENTLY would wait on it).
pub struct CronDb {
    pub url: DatabaseUrl,
    pub client: Client,
    _lock: Client,
}

const CRON_DB_TEST_LOCK: i64 = 0x746a_7465;

/// Empties cron.database_name: no auth (or tj) schema, history or pg_cron.
const CRON_DB_RESET: &str = "DROP SCHEMA IF EXISTS auth CASCADE;
     DROP SCHEMA IF EXISTS tj CASCADE;
     DROP TABLE IF EXISTS refinery_schema_history;
     DROP EXTENSION IF EXISTS pg_cron;";

/// Runs `sql` on `url` from a runtime of its own on another thread: for
/// `Drop`, which runs inside a test's runtime and cannot block it.
fn execute_detached(url: DatabaseUrl, sql: String) {
    let _ = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async {
                if let Ok(client) = url.connect().await {
                    let _ = client.batch_execute(&sql).await;
                }
            })
    })
    .join();
}

impl CronDb {
    pub async fn fresh() -> Self {
        let lock = server().with_dbname("postgres").connect().await.unwrap();
        lock.query_one("SELECT pg_advisory_lock($1)", &[&CRON_DB_TEST_LOCK])
            .await
            .unwrap();
        let url = server();
        let client = url.connect().await.unwrap();
        client.batch_execute(CRON_DB_RESET).await.unwrap();
        Self {
            url,
            client,
            _lock: lock,
        }
    }
}

/// Leaves cron.database_name empty again, so a test's sabotage never
/// reaches `make demo` or the next test.
impl Drop for CronDb {
    fn drop(&mut self) {
        execute_detached(self.url.clone(), CRON_DB_RESET.to_string());
    }
}

/// Polls `check` every 100 ms until it returns Some, or panics after `limit`.
pub async fn poll<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs `sql`, which must fail on the server; returns the server's message
/// followed by the violated constraint's name, if any.
pub async fn refused(client: &Client, sql: &str) -> String {
    let err = client.batch_execute(sql).await.expect_err(sql);
    let db = err
        .as_db_error()
        .unwrap_or_else(|| panic!("not a server error: {err:?}"));
    format!("{} {}", db.message(), db.constraint().unwrap_or(""))
}

/// The first column of every row `sql` returns.
pub async fn column<T>(client: &Client, sql: &str) -> Vec<T>
where
    T: for<'a> tokio_postgres::types::FromSql<'a>,
{
    client
        .query(sql, &[])
        .await
        .unwrap_or_else(|err| panic!("{sql}: {err:?}"))
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// The roles that own schema auth and the relations and routines in it.
pub async fn owners_in_auth(client: &Client) -> Vec<String> {
    column(
        client,
        "SELECT DISTINCT pg_get_userbyid(o)::text FROM (
             SELECT nspowner FROM pg_namespace WHERE nspname = 'auth'
             UNION ALL SELECT relowner FROM pg_class WHERE relnamespace = 'auth'::regnamespace
             UNION ALL SELECT proowner FROM pg_proc WHERE pronamespace = 'auth'::regnamespace
         ) x(o)",
    )
    .await
}

/// Row counts of the two token tables.
pub async fn counts(client: &Client) -> (i64, i64) {
    let row = client
        .query_one(
            "SELECT (SELECT count(*) FROM auth.sessions), (SELECT count(*) FROM auth.refresh_tokens)",
            &[],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}
