//! Timeouts by default: against a server that accepts TCP and never answers,
//! connecting, a TokenStore call and `token-janitor status` give up within the
//! URL's connect_timeout, naming it; a TokenStore call whose future is dropped,
//! or whose statement timeout expires, no longer runs on the server.

mod common;

use std::time::{Duration, Instant};

use common::*;
use token_janitor::{ConnectFailure, DatabaseUrl, Error, TokenStore};
use tokio::net::TcpListener;
use tokio_postgres::Client;

/// A listener on 127.0.0.1 that accepts every connection and never writes a
/// byte; returns a URL to it with `connect_timeout=1`.
async fn silent_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    format!("postgres://app@127.0.0.1:{port}/app?connect_timeout=1")
}

/// Some slack over the 1 s timeout for a loaded machine; far below "hangs".
const GIVES_UP_WITHIN: Duration = Duration::from_secs(5);

#[tokio::test]
async fn connecting_to_a_server_that_never_answers_gives_up_at_connect_timeout() {
    let url = DatabaseUrl::parse(&silent_server().await).unwrap();
    let started = Instant::now();
    let err = url.connect().await.unwrap_err();
    assert!(
        started.elapsed() < GIVES_UP_WITHIN,
        "{:?}",
        started.elapsed()
    );
    assert!(
        matches!(err, Error::Connect { failure: ConnectFailure::Timeout { timeout }, .. } if timeout == Duration::from_secs(1)),
        "{err}"
    );
    assert!(err.to_string().contains("connect_timeout"), "{err}");
}

#[tokio::test]
async fn a_token_store_call_to_a_server_that_never_answers_gives_up_at_connect_timeout() {
    let url = DatabaseUrl::parse(&silent_server().await).unwrap();
    let store = TokenStore::new(url.pool(2));
    let started = Instant::now();
    let err = store.issue("user-1").await.unwrap_err();
    assert!(
        started.elapsed() < GIVES_UP_WITHIN,
        "{:?}",
        started.elapsed()
    );
    assert!(
        err.to_string().contains("create timeout") && err.to_string().contains("connect_timeout"),
        "{err}"
    );
}

#[tokio::test]
async fn status_against_a_server_that_never_answers_gives_up_at_connect_timeout() {
    let url = silent_server().await;
    let started = Instant::now();
    let out = tokio::time::timeout(Duration::from_secs(30), run_cli(&["status"], &url))
        .await
        .expect("status hung");
    assert!(
        started.elapsed() < GIVES_UP_WITHIN,
        "{:?}",
        started.elapsed()
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("within connect_timeout (1s)"), "{stderr}");
}

/// A session whose row the returned transaction holds FOR UPDATE, so that
/// rotating its token waits on the lock; and the token.
async fn locked_session(db: &TestDb, store: &TokenStore) -> (Client, String) {
    let issued = store.issue("user-1").await.unwrap();
    let holder = db.connect().await;
    holder
        .batch_execute(&format!(
            "BEGIN; SELECT 1 FROM auth.sessions WHERE id = '{}' FOR UPDATE",
            issued.session_id
        ))
        .await
        .unwrap();
    (holder, issued.token.expose().to_string())
}

/// How many backends run auth.rotate_token in this database, and how many
/// of them wait on a lock.
async fn rotating(client: &Client) -> (i64, i64) {
    let row = client
        .query_one(
            "SELECT count(*), count(*) FILTER (WHERE wait_event_type = 'Lock')
             FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid()
               AND state = 'active' AND query LIKE '%auth.rotate_token%'",
            &[],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

async fn no_rotation_left(client: &Client) {
    poll(
        "the rotation's query to end",
        Duration::from_secs(10),
        || async { (rotating(client).await.0 == 0).then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn a_dropped_rotate_is_cancelled_on_the_server() {
    let db = TestDb::migrated().await;
    let store = TokenStore::new(db.url.pool(1));
    let (holder, token) = locked_session(&db, &store).await;

    let mut rotation = Box::pin(store.rotate(&token));
    tokio::select! {
        done = &mut rotation => panic!("rotate did not wait on the lock: {done:?}"),
        () = poll("rotate to wait on the lock", Duration::from_secs(10), || async {
            (rotating(&db.client).await == (1, 1)).then_some(())
        }) => {}
    }
    drop(rotation);
    // The lock is still held: only a cancel ends the query.
    no_rotation_left(&db.client).await;

    holder.batch_execute("ROLLBACK").await.unwrap();
    let generation: i32 = db
        .client
        .query_one("SELECT max(generation) FROM auth.sessions", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(generation, 0, "the cancelled rotation changed nothing");
    // The pool of one gave up the cancelled connection and opens another.
    assert!(matches!(
        store.rotate(&token).await.unwrap(),
        token_janitor::Rotation::Rotated(_)
    ));
}

#[tokio::test]
async fn a_rotate_past_its_statement_timeout_is_cancelled_and_says_so() {
    let db = TestDb::migrated().await;
    let store = TokenStore::new(db.url.pool(1)).with_statement_timeout(Duration::from_millis(300));
    let (_holder, token) = locked_session(&db, &store).await;

    let err = store.rotate(&token).await.unwrap_err();
    assert!(
        matches!(err, Error::StatementTimeout { call: "auth.rotate_token", timeout }
            if timeout == Duration::from_millis(300)),
        "{err}"
    );
    assert!(err.to_string().contains("statement timeout"), "{err}");
    no_rotation_left(&db.client).await;
}
