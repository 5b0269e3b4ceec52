//! Test databases on the server DATABASE_URL points at (`make test` starts a
//! local one with pg_cron). Each test gets its own database, dropped when the
//! test ends; tests that need pg_cron share cron.database_name and take turns.

#![allow(dead_code)] // each test binary uses its own subset of these helpers

use std::time::{Duration, Instant};

use base64::Engine;

use token_janitor::{DatabaseUrl, MigrateOptions, migrate};
use tokio_postgres::Client;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_token-janitor");

/// Runs the binary with `args` and DATABASE_URL set to `url`.
pub async fn run_cli(args: &[&str], url: &str) -> std::process::Output {
    tokio::process::Command::new(BIN)
        .args(args)
        .env("DATABASE_URL", url)
        .output()
        .await
        .unwrap()
}

/// Runs the binary like [`run_cli`] and asserts that it succeeded.
pub async fn run_cli_ok(args: &[&str], url: &str) -> std::process::Output {
    let out = run_cli(args, url).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A URL string for the CLI that reaches `db` as `user`.
pub fn cli_url(db: &DatabaseUrl, user: &str) -> String {
    format!("postgres://{user}@{}/{}", db.target(), db.dbname())
}

/// The server under test.
pub fn server() -> DatabaseUrl {
    let url = std::env::var("DATABASE_URL").expect(
        "DATABASE_URL is not set: run the tests with `make test`, or point DATABASE_URL at a \
         PostgreSQL 15 server with pg_cron preloaded",
    );
    DatabaseUrl::parse(&url).expect("DATABASE_URL parses")
}

/// Applies the versioned migrations of this checkout up to `version` only,
/// as an older release would have left the database (no sql/ definitions):
/// the starting point of upgrade tests.
pub async fn migrate_to(client: &mut Client, version: i32) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    files.sort();
    let migrations: Vec<refinery::Migration> = files
        .iter()
        .map(|path| {
            let name = path.file_stem().unwrap().to_str().unwrap();
            refinery::Migration::unapplied(name, &std::fs::read_to_string(path).unwrap()).unwrap()
        })
        .collect();
    refinery::Runner::new(&migrations)
        .set_target(refinery::Target::Version(version))
        .run_async(client)
        .await
        .unwrap();
}

/// A login role that is a member of `group`, and a client connected as it.
pub async fn member_of(db: &TestDb, group: &str) -> (String, DatabaseUrl, Client) {
    let role = format!("tj_login_{}", uuid::Uuid::new_v4().simple());
    db.client
        .batch_execute(&format!("CREATE ROLE {role} LOGIN IN ROLE {group}"))
        .await
        .unwrap();
    let url = DatabaseUrl::parse(&cli_url(&db.url, &role)).unwrap();
    let client = url.connect().await.unwrap();
    (role, url, client)
}

/// Disconnects `client` and drops the login role `member_of` made.
pub async fn drop_member(db: &TestDb, role: &str, client: Client) {
    drop(client);
    db.client
        .batch_execute(&format!("DROP ROLE {role}"))
        .await
        .unwrap();
}

/// Asserts that each statement is refused for lack of privilege.
pub async fn all_denied(client: &Client, statements: &[&str]) {
    for sql in statements {
        let err = client.batch_execute(sql).await.expect_err(sql);
        assert_eq!(
            err.code(),
            Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
            "{sql}: {err:?}"
        );
    }
}

/// Migrate options for a database without pg_cron.
pub fn no_schedule() -> MigrateOptions {
    MigrateOptions {
        schedule: None,
        ..MigrateOptions::default()
    }
}

/// Migrate options that reach pg_cron's database from `url` as the command
/// line does, when it is another one.
pub fn reaching_cron(url: &DatabaseUrl) -> MigrateOptions {
    MigrateOptions {
        cron_database: Some(token_janitor::schedule::CronDatabase::Like(url.clone())),
        ..MigrateOptions::default()
    }
}

/// Migrates as `url`'s role, reaching pg_cron's database; the migrate must
/// be refused. Returns the connection (to check that nothing changed) and the
/// error.
pub async fn refused_migrate(url: &DatabaseUrl) -> (Client, token_janitor::Error) {
    let mut client = url.connect().await.unwrap();
    let err = migrate(&mut client, &reaching_cron(url))
        .await
        .expect_err("migrate must be refused");
    (client, err)
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

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        execute_detached(
            server().with_dbname("postgres"),
            format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
    }
}

/// Drops cluster-wide roles a test created, once the databases that held
/// their objects are gone.
pub async fn drop_roles(roles: &[&str]) {
    server()
        .with_dbname("postgres")
        .connect()
        .await
        .unwrap()
        .batch_execute(&format!("DROP ROLE {}", roles.join(", ")))
        .await
        .unwrap();
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

/// Empties cron.database_name: no auth schema, history or pg_cron.
const CRON_DB_RESET: &str = "DROP SCHEMA IF EXISTS auth CASCADE;
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

/// 2026-01-01T00:00:00Z, the fixed clock tests start from.
pub const T0_UNIX: u64 = 1_767_225_600;

/// T0 plus `seconds` (negative: before T0).
pub fn at(seconds: i64) -> std::time::SystemTime {
    let t0 = std::time::UNIX_EPOCH + Duration::from_secs(T0_UNIX);
    if seconds >= 0 {
        t0 + Duration::from_secs(seconds as u64)
    } else {
        t0 - Duration::from_secs(seconds.unsigned_abs())
    }
}

pub const MINUTE: i64 = 60;
pub const HOUR: i64 = 3600;
pub const DAY: i64 = 86_400;

/// A stand-in token hash: SHA-256 of `seed`.
pub fn hash(seed: &str) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(seed.as_bytes()).to_vec()
}

/// `auth.issue_token` with hash(seed), a TTL in seconds, at `now`.
pub async fn issue(
    client: &Client,
    user: &str,
    seed: &str,
    ttl_s: i64,
    now: std::time::SystemTime,
) -> uuid::Uuid {
    client
        .query_one(
            "SELECT session_id FROM auth.issue_token(p_user_id => $1, p_token_hash => $2,
                 p_ttl => make_interval(secs => $3), p_now => $4)",
            &[&user, &hash(seed), &(ttl_s as f64), &now],
        )
        .await
        .unwrap()
        .get(0)
}

/// `auth.rotate_token` presenting hash(seed) for `generation` and asking for
/// hash(new_seed); returns the outcome. The token carries the authenticator
/// its issuer would have given it for that hash (computed with the session's
/// key, as only the database can): a genuine token when `seed` is the one
/// issued. A forger, who has no key, is `present_forged`.
pub async fn rotate(
    client: &Client,
    session: uuid::Uuid,
    generation: i32,
    seed: &str,
    new_seed: &str,
    ttl_s: i64,
    now: std::time::SystemTime,
) -> String {
    client
        .query_one(
            "SELECT outcome FROM auth.rotate_token(p_session_id => $1, p_generation => $2,
                 p_token_hash => $3, p_new_token_hash => $4,
                 p_ttl => make_interval(secs => $5), p_now => $6,
                 p_authenticator => (SELECT auth._authenticator(s.mac_key, $1, $2, $3)
                                     FROM auth.sessions s WHERE s.id = $1))",
            &[
                &session,
                &generation,
                &hash(seed),
                &hash(new_seed),
                &(ttl_s as f64),
                &now,
            ],
        )
        .await
        .unwrap()
        .get(0)
}

/// `auth.purge_refresh_tokens` at `now`: (expired, revoked, rotated, sessions).
pub async fn purge(
    client: &Client,
    now: std::time::SystemTime,
    limit: Option<i32>,
) -> (i64, i64, i64, i64) {
    let row = client
        .query_one(
            "SELECT expired, revoked, rotated, sessions
             FROM auth.purge_refresh_tokens(p_now => $1, p_limit => $2)",
            &[&now, &limit],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1), row.get(2), row.get(3))
}

/// Seeds `sessions` live families of `per_session` tokens each: generations
/// 0..n-2 rotated (about one a minute, ending two hours ago, so all due under
/// the default policy) and the newest live; then ANALYZEs the tables.
pub async fn seed_families(client: &Client, sessions: i64, per_session: i32) {
    client
        .execute(
            "WITH s AS (
                 INSERT INTO auth.sessions (user_id, created_at, generation, refresh_expires_at)
                 SELECT 'user-' || i, now() - interval '3 hours', $2 - 1, now() + interval '30 days'
                 FROM generate_series(1, $1::bigint) i RETURNING id)
             INSERT INTO auth.refresh_tokens (session_id, generation, token_hash, issued_at, expires_at, revoked_at, revoke_reason)
             SELECT id, g, sha256((id::text || g)::bytea), now() - interval '3 hours', now() + interval '30 days',
                    CASE WHEN g < $2 - 1
                         THEN now() - interval '2 hours' - ($2 - g) * interval '1 minute' - random() * interval '1 minute' END,
                    CASE WHEN g < $2 - 1 THEN 'rotated' END
             FROM s, generate_series(0, $2 - 1) g",
            &[&sessions, &per_session],
        )
        .await
        .unwrap();
    client
        .batch_execute("ANALYZE auth.sessions, auth.refresh_tokens")
        .await
        .unwrap();
}

/// A token string taken apart as a client (or a thief) can: session id,
/// generation, secret, authenticator (rt2_ only).
pub struct Parts {
    pub session: uuid::Uuid,
    pub generation: i32,
    pub secret: Vec<u8>,
    pub authenticator: Option<Vec<u8>>,
}

pub fn parts(token: &str) -> Parts {
    let (prefix, body) = token.split_at(4);
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(body)
        .unwrap();
    Parts {
        session: uuid::Uuid::from_slice(&bytes[..16]).unwrap(),
        generation: i32::from_be_bytes(bytes[16..20].try_into().unwrap()),
        secret: bytes[20..52].to_vec(),
        authenticator: (prefix == "rt2_").then(|| bytes[52..68].to_vec()),
    }
}

/// A token string built from parts: rt2_ with an authenticator, rt1_ without.
pub fn build(
    session: uuid::Uuid,
    generation: i32,
    secret: &[u8],
    authenticator: Option<&[u8]>,
) -> String {
    let mut bytes = session.as_bytes().to_vec();
    bytes.extend_from_slice(&generation.to_be_bytes());
    bytes.extend_from_slice(secret);
    let prefix = match authenticator {
        Some(a) => {
            bytes.extend_from_slice(a);
            "rt2_"
        }
        None => "rt1_",
    };
    format!(
        "{prefix}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

pub fn random(n: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; n];
    rand::fill(&mut bytes[..]);
    bytes
}
