//! The races that matter, run by PostgreSQL's own isolation tester
//! (`pg_isolation_regress`, shipped with postgresql-15 under its pgxs
//! folder): each spec in tests/isolation/specs interleaves two sessions step
//! by step in every listed order, and its output must equal the expected file
//! in tests/isolation/expected.
//! - rotate_twice: two rotations of one token get one successor;
//! - rotate_vs_revoke: a rotation and a logout of its session;
//! - batch_vs_purge: a scheduled batch and a purge_refresh_tokens call;
//! - rotate_vs_purge: a rotation and the purge of its predecessor's row;
//! - replay_vs_purge: a replay revoking a long-expired family and the purge
//!   of that family (a deadlock before the session step skipped held rows).

mod common;

use common::*;
use tokio_postgres::config::Host;

const DRIVER: &str = "/usr/lib/postgresql/15/lib/pgxs/src/test/isolation/pg_isolation_regress";

#[tokio::test]
async fn the_races_that_matter_end_as_expected() {
    let db = TestDb::migrated().await;
    let config = db.url.config();
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(host)) => host.clone(),
        Some(Host::Unix(path)) => path.display().to_string(),
        None => "localhost".to_string(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let user = config.get_user().unwrap_or("postgres");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let output = root.join("target").join(format!("isolation-{}", db.name()));
    let specs = [
        "rotate_twice",
        "rotate_vs_revoke",
        "batch_vs_purge",
        "rotate_vs_purge",
        "replay_vs_purge",
    ];
    let run = tokio::process::Command::new(DRIVER)
        .arg("--use-existing")
        .arg(format!("--host={host}"))
        .arg(format!("--port={port}"))
        .arg(format!("--user={user}"))
        .arg(format!("--dbname={}", db.name()))
        .arg(format!(
            "--inputdir={}",
            root.join("tests/isolation").display()
        ))
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
