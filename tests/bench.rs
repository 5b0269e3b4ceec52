//! `bench` end to end at a toy size: every strategy deletes the same due
//! rows, every layout asked for is measured, the report carries the
//! documented fields, and no scratch database is left behind. (The numbers
//! themselves come from `make bench`.)

mod common;

use common::*;

async fn scratch_databases() -> i64 {
    server()
        .with_dbname("postgres")
        .connect()
        .await
        .unwrap()
        .query_one(
            "SELECT count(*) FROM pg_database WHERE datname LIKE 'tj_bench_%'",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

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
    assert_eq!(report["pace"], true);
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
            assert!(s["ratio_to_single_delete"].as_f64().unwrap() > 0.0, "{s}");
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
            "rotate_p50_ms",
            "rotate_p99_ms",
        ] {
            assert!(s[field].is_number(), "{field} missing in {s}");
        }
        assert_eq!(s["rows_deleted"], 4500, "{s}");
        assert_eq!(s["rotate_failures"], 0, "{s}");
    }
    assert_eq!(strategies[0]["ratio_to_single_delete"], 1.0);
    let roles: Vec<&str> = strategies
        .iter()
        .map(|s| s["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["baseline", "subject", "peer", "peer"]);
    let scaling = report["scaling"].as_array().unwrap();
    assert_eq!(scaling.len(), 2);
    assert_eq!(scaling[0]["live_rows"], serde_json::json!([2000, 10000]));

    let table = std::fs::read_to_string(&markdown).unwrap();
    assert!(
        table.contains("| token-janitor |") && table.contains("| hydra-shape |"),
        "{table}"
    );
    for layout in ["time", "session", "interleaved", "ties"] {
        assert!(table.contains(&format!("| {layout} | ")), "{table}");
    }
    assert_eq!(&std::fs::read(&png).unwrap()[1..4], b"PNG");
    assert_eq!(
        scratch_databases().await,
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
    ] {
        let out = run_cli(&args, "postgres://postgres@127.0.0.1:1/x").await;
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("invalid value"),
            "{args:?}"
        );
    }
}
