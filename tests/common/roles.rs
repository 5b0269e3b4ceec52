//! Login roles made for a test, what they may not do, and dropping them.

use token_janitor::DatabaseUrl;
use tokio_postgres::Client;

use super::{TestDb, cli_url, server};

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
