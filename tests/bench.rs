//! `bench` end to end at a toy size: every strategy deletes the same due
//! rows, every layout asked for is measured, the report carries the
//! documented fields, and no scratch database is left behind. (The numbers
//! themselves come from `make bench`.)

mod common;

use common::*;

/// Databases on the server whose names start with `prefix`.
async fn scratch_databases(prefix: &str) -> i64 {
    server()
        .with_dbname("postgres")
        .connect()
        .await
        .unwrap()
        .query_one(
            "SELECT count(*) FROM pg_database WHERE starts_with(datname, $1)",
            &[&prefix],
        )
        .await
        .unwrap()
        .get(0)
}

/// The half-minute soak the tests run: 20 sessions at 50 rotations/s.
const TINY_SOAK: [&str; 8] = [
    "bench",
    "--soak",
    "--minutes",
    "0.5",
    "--sessions",
    "20",
    "--rotate-rate",
    "50",
];

#[tokio::test]
async fn bench_reports_every_strategy_and_cleans_up() {
    let dir = std::env::temp_dir().join(format!("tj-bench-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let (json, markdown, png) = (dir.join("b.json"), dir.join("b.md"), dir.join("b.png"));
    let url = cli_url(&server(), "postgres");
    run_cli_ok(
        &[
            "bench",
            "--rows",
            "5000",
            "--rotate-rate",
            "50",
            "--idle-seconds",
            "1",
            "--peer-cap-seconds",
            "20",
            "--batch-size",
            "700",
            "--layout",
            "ties",
            "--layout",
            "all",
            "--pace",
            "off",
            "--repeat",
            "2",
            "--scaling",
            "--scaling-due",
            "2000",
            "--scaling-live",
            "2000",
            "--json",
            json.to_str().unwrap(),
            "--markdown",
            markdown.to_str().unwrap(),
            "--png",
            png.to_str().unwrap(),
        ],
        &url,
    )
    .await;

    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(report["rows"], 5000);
    assert_eq!(report["batch_size"], 700);
    assert_eq!(report["pace"], false);
    assert!(report["idle_rotate_p99_ms"].as_f64().unwrap() > 0.0);
    assert!(report["machine"]["cores"].as_u64().unwrap() > 0);
    let layouts = report["layouts"].as_array().unwrap();
    let measured: Vec<(&str, i64)> = layouts
        .iter()
        .map(|l| (l["layout"].as_str().unwrap(), l["due"].as_i64().unwrap()))
        .collect();
    // The first named comes first; a repeat is measured once.
    assert_eq!(
        measured,
        [
            ("ties", 4500),
            ("time", 4500),
            ("session", 4500),
            ("interleaved", 2250)
        ]
    );
    for layout in &layouts[1..] {
        let strategies = layout["strategies"].as_array().unwrap();
        let names: Vec<&str> = strategies
            .iter()
            .map(|s| s["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["single-delete", "token-janitor"], "{layout}");
        for s in strategies {
            assert_eq!(s["rows_deleted"], layout["due"], "{s}");
            assert_eq!(s["runs_seconds"].as_array().unwrap().len(), 2, "{s}");
            assert_eq!(s["loaded_runs_seconds"].as_array().unwrap().len(), 2, "{s}");
            assert!(s["ratio_to_single_delete"].as_f64().unwrap() > 0.0, "{s}");
            assert!(
                s["loaded_ratio_to_single_delete"].as_f64().unwrap() > 0.0,
                "{s}"
            );
        }
    }
    let strategies = layouts[0]["strategies"].as_array().unwrap();
    let names: Vec<&str> = strategies
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "single-delete",
            "token-janitor",
            "supabase-shape",
            "hydra-shape"
        ]
    );
    for s in strategies {
        for field in [
            "rows_deleted",
            "seconds",
            "rows_per_s",
            "ratio_to_single_delete",
            "wal_bytes",
            "loaded_seconds",
            "loaded_rows_per_s",
            "loaded_ratio_to_single_delete",
            "rotate_p50_ms",
            "rotate_p99_ms",
        ] {
            assert!(s[field].is_number(), "{field} missing in {s}");
        }
        assert_eq!(s["rows_deleted"], 4500, "{s}");
        assert_eq!(s["rotate_failures"], 0, "{s}");
    }
    assert_eq!(strategies[0]["ratio_to_single_delete"], 1.0);
    assert_eq!(strategies[0]["loaded_ratio_to_single_delete"], 1.0);
    let roles: Vec<&str> = strategies
        .iter()
        .map(|s| s["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["baseline", "subject", "peer", "peer"]);
    let rounds: Vec<usize> = strategies
        .iter()
        .map(|s| s["runs_seconds"].as_array().unwrap().len())
        .collect();
    assert_eq!(rounds, [2, 2, 1, 1], "peers run once");
    assert_eq!(report["repeat"], 2);
    let scaling = report["scaling"].as_array().unwrap();
    assert_eq!(scaling.len(), 2);
    assert_eq!(scaling[0]["live_rows"], serde_json::json!([2000, 10000]));

    let table = std::fs::read_to_string(&markdown).unwrap();
    assert!(
        table.contains("| token-janitor |") && table.contains("| hydra-shape |"),
        "{table}"
    );
    assert!(table.contains("ran 2 times on each layout"), "{table}");
    for layout in ["time", "session", "interleaved", "ties"] {
        assert!(table.contains(&format!("| {layout} | ")), "{table}");
    }
    assert_eq!(&std::fs::read(&png).unwrap()[1..4], b"PNG");
    assert_eq!(
        scratch_databases("tj_bench_").await,
        0,
        "scratch databases are dropped"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn bench_refuses_bad_flags() {
    for args in [
        ["bench", "--due-share", "0.95"],
        ["bench", "--rotate-rate", "0"],
        ["bench", "--rows", "10"],
        ["bench", "--batch-size", "0"],
        ["bench", "--layout", "sideways"],
        ["bench", "--repeat", "0"],
        ["bench", "--pace", "maybe"],
    ] {
        let out = run_cli(&args, "postgres://postgres@127.0.0.1:1/x").await;
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("invalid value"),
            "{args:?}"
        );
    }
}

/// A soak of half a minute: the report has its documented shape and sane
/// values, the cleanup ran and deleted rows, sessions churned, and the
/// scratch database is gone. (The numbers come from the default run.)
#[tokio::test]
async fn soak_reports_samples_and_ratios() {
    let dir = std::env::temp_dir().join(format!("tj-soak-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let (json, png) = (dir.join("s.json"), dir.join("s.png"));
    let url = cli_url(&server(), "postgres");
    let mut args = TINY_SOAK.to_vec();
    args.extend([
        "--batch-size",
        "500",
        "--json",
        json.to_str().unwrap(),
        "--png",
        png.to_str().unwrap(),
    ]);
    let out = run_cli_ok(&args, &url).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("| size_growth"), "{stdout}");

    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let soak = &report["soak"];
    let samples = soak["samples"].as_array().unwrap();
    assert!(samples.len() >= 10, "{soak}");
    let mut elapsed = 0.0;
    for s in samples {
        for key in [
            "elapsed_s",
            "heap_bytes",
            "index_bytes",
            "token_rows",
            "live_sessions",
            "rotate_p99_ms",
        ] {
            assert!(s[key].as_f64().unwrap() > 0.0, "{key} in {s}");
        }
        assert!(s["elapsed_s"].as_f64().unwrap() > elapsed, "{s}");
        elapsed = s["elapsed_s"].as_f64().unwrap();
        // The 20 devices stay logged in (a logout logs in again).
        assert!(s["live_sessions"].as_i64().unwrap() >= 20, "{s}");
    }
    for key in [
        "size_growth",
        "rows_per_live_session",
        "rotate_p99_growth",
        "rotate_p99_first_ms",
        "rotate_p99_last_ms",
    ] {
        assert!(soak[key].as_f64().unwrap() > 0.0, "{key} in {soak}");
    }
    // At least each live session's token; far from the table growing
    // without bound (hundreds of rotations per session).
    let per_session = soak["rows_per_live_session"].as_f64().unwrap();
    assert!((1.0..20.0).contains(&per_session), "{soak}");
    assert_eq!(soak["batch_size"], 500);
    // 20 sessions at 50 rotations/s: a refresh every 0.4 s stands for 15
    // minutes, rotated rows are kept 4 of them.
    assert_eq!(soak["policy"]["refresh_s"], 0.4);
    assert!((soak["policy"]["rotated_retention_s"].as_f64().unwrap() - 1.6).abs() < 1e-9);
    assert!(soak["traffic"]["rotations"].as_i64().unwrap() > 0, "{soak}");
    assert_eq!(soak["traffic"]["rotate_failures"], 0, "{soak}");
    assert!(soak["traffic"]["logouts"].as_i64().unwrap() > 0, "{soak}");
    assert!(soak["cleanup"]["runs"].as_i64().unwrap() > 0, "{soak}");
    assert_eq!(soak["cleanup"]["failed"], 0, "{soak}");
    assert!(
        soak["cleanup"]["tokens_deleted"].as_i64().unwrap() > 0,
        "{soak}"
    );
    let relations: Vec<&str> = soak["relations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert!(
        relations.contains(&"refresh_tokens")
            && relations.contains(&"refresh_tokens_rotated_purge_idx"),
        "{relations:?}"
    );
    assert!(report["machine"]["cores"].as_u64().unwrap() > 0);
    assert_eq!(&std::fs::read(&png).unwrap()[1..4], b"PNG");
    assert_eq!(
        scratch_databases("tj_soak_").await,
        0,
        "the soak's database is dropped"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn soak_refuses_flags_it_cannot_use() {
    let unreachable = "postgres://postgres@127.0.0.1:1/x";
    for (args, says) in [
        (
            &["bench", "--soak", "--rows", "5000"][..],
            "cannot be used with",
        ),
        (
            &["bench", "--soak", "--layout", "ties"],
            "cannot be used with",
        ),
        (&["bench", "--soak", "--scaling"], "cannot be used with"),
        (&["bench", "--soak", "--repeat", "3"], "cannot be used with"),
        (&["bench", "--minutes", "1"], "--soak"),
        (&["bench", "--sessions", "100"], "--soak"),
        (&["bench", "--soak", "--sessions", "5"], "invalid value"),
        (&["bench", "--soak", "--minutes", "0"], "invalid value"),
    ] {
        let out = run_cli(args, unreachable).await;
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
    // 1000 sessions at 300 rotations/s refresh every 3.3 s: an abandoned
    // login stays 53 s, longer than a 6-second soak's warm-up. Refused
    // before connecting.
    let out = run_cli(
        &["bench", "--soak", "--minutes", "0.1", "--sessions", "1000"],
        unreachable,
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("warms up for 2 s"), "{stderr}");
}

/// A soak (or bench) stopped by SIGTERM — a supervisor, a CI timeout —
/// still drops its scratch database, which holds gigabytes on a real run,
/// and says why it ended.
#[tokio::test]
async fn a_soak_stopped_by_sigterm_drops_its_scratch_database() {
    let url = cli_url(&server(), "postgres");
    let child = tokio::process::Command::new(BIN)
        .args(TINY_SOAK)
        .env("DATABASE_URL", &url)
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let prefix = format!("tj_soak_{}_", child.id().unwrap());
    poll(
        "the soak to create its scratch database",
        std::time::Duration::from_secs(60),
        || async { (scratch_databases(&prefix).await > 0).then_some(()) },
    )
    .await;
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &child.id().unwrap().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let out = child.wait_with_output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("interrupted by SIGTERM"), "{stderr}");
    assert_eq!(scratch_databases(&prefix).await, 0, "{stderr}");
}
