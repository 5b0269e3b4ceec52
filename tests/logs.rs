//! Logs fit where they go: plain text without colour codes when stderr is a
//! pipe or a file, and one JSON object per line with `--log-format json`.

mod common;

use common::*;

/// The log lines a fresh migrate writes to stderr (a pipe here).
async fn migrate_logs(extra: &[&str]) -> String {
    let db = TestDb::empty().await;
    let mut args = vec!["migrate", "--no-schedule"];
    args.extend_from_slice(extra);
    let out = run_cli_ok(&args, &cli_url(&db.url, "postgres")).await;
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("V1__auth_schema"),
        "migrate logs each migration it applies: {stderr}"
    );
    stderr
}

#[tokio::test]
async fn logs_to_a_pipe_carry_no_colour_codes() {
    let stderr = migrate_logs(&[]).await;
    assert!(
        !stderr.contains('\u{1b}'),
        "an escape byte in logs written to a pipe: {stderr:?}"
    );
}

#[tokio::test]
async fn log_format_json_writes_one_object_per_line() {
    let stderr = migrate_logs(&["--log-format", "json"]).await;
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|err| panic!("{err}: not JSON: {line}"))
        })
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l["level"] == "INFO" && l["fields"]["migration"] == "V1__auth_schema"),
        "{stderr}"
    );
}

/// Issue 28: tokio-postgres logs every statement's parameters at debug level
/// (token hashes, authenticators, seals). Whatever RUST_LOG asks, the command
/// line keeps it at info; token-janitor's own debug lines still show.
#[tokio::test]
async fn no_log_level_shows_statement_parameters() {
    let db = TestDb::empty().await;
    let out = tokio::process::Command::new(BIN)
        .args(["migrate", "--no-schedule"])
        .env("DATABASE_URL", cli_url(&db.url, "postgres"))
        .env("RUST_LOG", "trace")
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("V1__auth_schema"), "{stderr}");
    assert!(
        !stderr.contains("with parameters"),
        "a statement's parameters in the logs: {stderr}"
    );
}
