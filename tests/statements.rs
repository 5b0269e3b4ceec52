//! TokenStore's statements: prepared once per pooled connection, and
//! prepared again when the server no longer has them as they were.

mod common;

use common::{TestDb, drop_member, member_of};
use token_janitor::deadpool_postgres::Pool;
use token_janitor::{Issued, Rotation, TokenStore};
use tokio_postgres::Client;

/// A migrated database, and a store as a login role of token_janitor_app on
/// a pool of one connection: every call of the store runs on it, and the
/// test reads what the server holds there between calls.
struct OneConnection {
    db: TestDb,
    role: String,
    app: Client,
    pool: Pool,
    store: TokenStore,
}

impl OneConnection {
    async fn new() -> Self {
        let db = TestDb::migrated().await;
        let (role, url, app) = member_of(&db, "token_janitor_app").await;
        let pool = url.pool(1);
        let store = TokenStore::new(pool.clone());
        Self {
            db,
            role,
            app,
            pool,
            store,
        }
    }

    /// The statements the server holds on the connection (by the function
    /// each calls), with how many times each was executed.
    async fn prepared(&self) -> Vec<(String, i64)> {
        self.pool
            .get()
            .await
            .unwrap()
            .query(
                "SELECT regexp_replace(statement, '^SELECT .* FROM auth\\.([a-z_]+)\\(.*$', '\\1', 's'),
                        generic_plans + custom_plans
                 FROM pg_catalog.pg_prepared_statements
                 WHERE from_sql IS FALSE AND statement NOT LIKE '%pg_prepared_statements%'
                 ORDER BY 1",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect()
    }

    /// The name of the statement that calls auth.list_sessions on the
    /// connection.
    async fn list_statement_name(&self) -> String {
        self.pool
            .get()
            .await
            .unwrap()
            .query_one(
                "SELECT name FROM pg_catalog.pg_prepared_statements
                 WHERE from_sql IS FALSE AND statement ^@ 'SELECT session_id, created_at'",
                &[],
            )
            .await
            .unwrap()
            .get(0)
    }

    /// The session's generation, as the server holds it.
    async fn generation(&self, token: &Issued) -> i32 {
        self.db
            .client
            .query_one(
                "SELECT generation FROM auth.sessions WHERE id = $1",
                &[&token.session_id],
            )
            .await
            .unwrap()
            .get(0)
    }

    /// A session of user u1, rotated once.
    async fn rotated_once(&self) -> Issued {
        let issued = self.store.issue("u1").await.unwrap();
        rotated(self.store.rotate(issued.token.expose()).await.unwrap())
    }

    async fn finish(self) {
        drop(self.store);
        drop(self.pool);
        drop_member(&self.db, &self.role, self.app).await;
    }
}

fn rotated(rotation: Rotation) -> Issued {
    match rotation {
        Rotation::Rotated(next) => next,
        other => panic!("expected a rotation, got {other:?}"),
    }
}

/// One connection in the pool: every call of the store runs on it, and the
/// test reads what the server holds there between calls.
#[tokio::test]
async fn each_statement_is_prepared_once_per_connection() {
    let t = OneConnection::new().await;

    let mut token = t.store.issue("u1").await.unwrap();
    for _ in 0..7 {
        token = rotated(t.store.rotate(token.token.expose()).await.unwrap());
    }
    assert_eq!(token.generation, 7);
    t.store.list_sessions("u1").await.unwrap();

    assert_eq!(
        t.prepared().await,
        vec![
            ("issue_token".to_string(), 1),
            ("list_sessions".to_string(), 1),
            ("rotate_token".to_string(), 7),
        ],
        "one statement per function, each call of it executing that statement"
    );
    t.finish().await;
}

/// A pool whose recycling deallocates the connection's statements (or an
/// application that shares the pool and runs DEALLOCATE ALL) leaves the
/// cache naming statements the server no longer has: the call prepares its
/// statement again, and rotates once.
#[tokio::test]
async fn a_deallocated_statement_is_prepared_again() {
    let t = OneConnection::new().await;
    let first = t.rotated_once().await;

    let connection = t.pool.get().await.unwrap();
    connection.batch_execute("DEALLOCATE ALL").await.unwrap();
    drop(connection);
    assert_eq!(t.prepared().await, vec![]);

    let second = rotated(t.store.rotate(first.token.expose()).await.unwrap());
    assert_eq!(second.generation, first.generation + 1);
    assert_eq!(
        t.generation(&first).await,
        second.generation,
        "rotated exactly once more"
    );
    assert_eq!(t.prepared().await, vec![("rotate_token".to_string(), 1)]);
    t.finish().await;
}

/// A migration that changes the type of a result column a statement reads:
/// PostgreSQL refuses the cached statement ("cached plan must not change
/// result type"); the store prepares it again and answers. Here
/// auth.list_sessions' device_label turns from text into varchar, as a
/// later release might make it.
#[tokio::test]
async fn a_statement_whose_result_type_changed_is_prepared_again() {
    let t = OneConnection::new().await;
    let issued = t
        .store
        .issue_with_options(
            "u1",
            &token_janitor::IssueOptions::default().device_label("laptop"),
        )
        .await
        .unwrap();
    assert_eq!(t.store.list_sessions("u1").await.unwrap().len(), 1);
    let before = t.list_statement_name().await;

    t.db.client
        .batch_execute(
            "ALTER FUNCTION auth.list_sessions(text, integer) RENAME TO list_sessions_before;
             CREATE FUNCTION auth.list_sessions(p_user_id text, p_limit integer DEFAULT 100)
             RETURNS TABLE (session_id uuid, created_at timestamptz, generation integer,
                            refresh_expires_at timestamptz, revoked_at timestamptz, revoke_reason text,
                            last_used_at timestamptz, device_label varchar(100), client_id text)
             LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
             AS $$ SELECT session_id, created_at, generation, refresh_expires_at, revoked_at, revoke_reason,
                          last_used_at, device_label::varchar(100), client_id
                   FROM auth.list_sessions_before(p_user_id, p_limit) $$;
             GRANT EXECUTE ON FUNCTION auth.list_sessions(text, integer) TO token_janitor_app;",
        )
        .await
        .unwrap();

    let sessions = t.store.list_sessions("u1").await.unwrap();
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0].session_id, issued.session_id);
    assert_eq!(sessions[0].device_label.as_deref(), Some("laptop"));
    assert_ne!(t.list_statement_name().await, before, "prepared again");
    t.finish().await;
}

/// The same for a call that writes: a rotation whose cached statement is
/// refused for its result type is made once, not twice (the session
/// advances one generation). Here auth.rotate_token's outcome turns from
/// text into varchar.
#[tokio::test]
async fn a_rotation_whose_result_type_changed_rotates_once() {
    let t = OneConnection::new().await;
    let first = t.rotated_once().await;

    t.db.client
        .batch_execute(
            "ALTER FUNCTION auth.rotate_token(uuid, integer, bytea, bytea, interval, bytea, bytea, text, text)
                 RENAME TO rotate_token_before;
             CREATE FUNCTION auth.rotate_token(p_session_id uuid, p_generation integer, p_token_hash bytea,
                                               p_new_token_hash bytea, p_ttl interval,
                                               p_authenticator bytea DEFAULT NULL,
                                               p_successor_seal bytea DEFAULT NULL,
                                               p_client_id text DEFAULT NULL, p_dpop_jkt text DEFAULT NULL)
             RETURNS TABLE (outcome varchar, generation integer, expires_at timestamptz, user_id text,
                            authenticator bytea, successor_seal bytea)
             LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
             AS $$ SELECT r.outcome::varchar, r.generation, r.expires_at, r.user_id, r.authenticator,
                          r.successor_seal
                   FROM auth.rotate_token_before(p_session_id, p_generation, p_token_hash, p_new_token_hash,
                                                 p_ttl, p_authenticator, p_successor_seal, p_client_id,
                                                 p_dpop_jkt) r $$;
             GRANT EXECUTE ON FUNCTION
                 auth.rotate_token(uuid, integer, bytea, bytea, interval, bytea, bytea, text, text)
                 TO token_janitor_app;",
        )
        .await
        .unwrap();

    let second = rotated(t.store.rotate(first.token.expose()).await.unwrap());
    assert_eq!(second.generation, first.generation + 1);
    assert_eq!(
        t.generation(&first).await,
        second.generation,
        "rotated exactly once"
    );
    t.finish().await;
}

/// A call the server refuses (here a device label over 100 characters)
/// takes its statement out of the cache: the connection prepares it again
/// at its next call, so an error that a statement as prepared would keep
/// causing fails one call, not every call on the connection.
#[tokio::test]
async fn a_refused_call_leaves_its_statement_to_be_prepared_again() {
    let t = OneConnection::new().await;
    let labelled = |label: String| token_janitor::IssueOptions::default().device_label(label);
    t.store
        .issue_with_options("u1", &labelled("laptop".to_string()))
        .await
        .unwrap();
    assert_eq!(t.prepared().await, vec![("issue_token".to_string(), 1)]);

    let refused = t
        .store
        .issue_with_options("u1", &labelled("x".repeat(101)))
        .await
        .expect_err("a label over 100 characters");
    assert!(refused.to_string().contains("p_device_label"), "{refused}");
    assert_eq!(t.prepared().await, vec![]);

    t.store
        .issue_with_options("u1", &labelled("phone".to_string()))
        .await
        .unwrap();
    assert_eq!(t.prepared().await, vec![("issue_token".to_string(), 1)]);
    t.finish().await;
}
