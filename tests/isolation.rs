//! The races that matter, run by PostgreSQL's own isolation tester
//! (`pg_isolation_regress`, shipped with postgresql-15 under its pgxs
//! folder): each spec in tests/isolation/specs interleaves two sessions step
//! by step in every listed order, and its output must equal the expected file
//! in tests/isolation/expected (or, with token_history on, in
//! tests/isolation/expected-history where that mode prints otherwise).
//! - rotate_twice: two rotations of one token get one successor;
//! - rotate_vs_revoke: a rotation and a logout of its session;
//! - batch_vs_purge: a scheduled batch and a purge_refresh_tokens call;
//! - rotate_vs_purge: a rotation and the purge of its predecessor's row;
//! - replay_vs_purge: a replay revoking a long-expired family and the purge
//!   of that family (a deadlock before the session step skipped held rows);
//! - rotate_vs_purge_of_its_row: a rotation and a purge, at a later clock,
//!   of the row it rotates (in place, the new token had no row before the
//!   rotation checked its UPDATE).

mod common;

use common::*;
use tokio_postgres::config::Host;

const DRIVER: &str = "/usr/lib/postgresql/15/lib/pgxs/src/test/isolation/pg_isolation_regress";

/// In both modes of `token_history`. tests/isolation/expected holds what
/// each spec prints with the default (rotation in place);
/// tests/isolation/expected-history what differs with a row per token. Each
/// mode runs from an input folder of its own (the specs and that mode's
/// expected outputs), so neither mode can pass with the other's output.
#[rstest::rstest]
#[tokio::test]
async fn the_races_that_matter_end_as_expected(#[values(false, true)] history: bool) {
    let db = TestDb::migrated().await;
    set_token_history(&db.client, history).await;
    let config = db.url.config();
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(host)) => host.clone(),
        Some(Host::Unix(path)) => path.display().to_string(),
        None => "localhost".to_string(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let user = config.get_user().unwrap_or("postgres");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let output = root
        .join("target")
        .join(format!("isolation-{}-history-{history}", db.name()));
    let input = output.join("input");
    std::fs::create_dir_all(input.join("expected")).unwrap();
    std::os::unix::fs::symlink(root.join("tests/isolation/specs"), input.join("specs")).unwrap();
    let mut folders = vec!["expected"];
    if history {
        folders.push("expected-history");
    }
    for folder in folders {
        for file in std::fs::read_dir(root.join("tests/isolation").join(folder)).unwrap() {
            let file = file.unwrap();
            std::fs::copy(file.path(), input.join("expected").join(file.file_name())).unwrap();
        }
    }
    let specs = [
        "rotate_twice",
        "rotate_vs_revoke",
        "batch_vs_purge",
        "rotate_vs_purge",
        "replay_vs_purge",
        "rotate_vs_purge_of_its_row",
    ];
    let run = tokio::process::Command::new(DRIVER)
        .arg("--use-existing")
        .arg(format!("--host={host}"))
        .arg(format!("--port={port}"))
        .arg(format!("--user={user}"))
        .arg(format!("--dbname={}", db.name()))
        .arg(format!("--inputdir={}", input.display()))
        .arg(format!("--outputdir={}", output.display()))
        .args(specs)
        .output()
        .await
        .unwrap_or_else(|err| panic!("{DRIVER}: {err} (is postgresql-15 installed?)"));
    let diffs = std::fs::read_to_string(output.join("regression.diffs")).unwrap_or_default();
    assert!(
        run.status.success(),
        "{}\n{}\n{diffs}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
}
