//! The `token-janitor` binary under test, run as a child process.

use token_janitor::DatabaseUrl;

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
