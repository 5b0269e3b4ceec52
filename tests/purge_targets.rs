//! The purge targets (`auth.purge_targets`, sql/05_purge_targets.sql): one
//! definition per kind of due row, read by every part of the cleanup. These
//! tests hold the definitions to the schema they describe and show that the
//! readers follow them, so a new kind is one row, its index and its column.

mod common;

use common::*;

/// Every definition names what exists: its table and key column, a counter
/// column of auth.cleanup_runs, interval settings of auth.cleanup_policy, a
/// known shape; kinds are unique.
#[tokio::test]
async fn every_definition_names_columns_and_settings_that_exist() {
    let db = TestDb::migrated().await;
    let rows = db
        .client
        .query(
            "SELECT t.kind, t.shape, t.relation::text, t.key_column, t.run_column, t.retentions,
                    t.row_key, t.due
             FROM auth.purge_targets() t",
            &[],
        )
        .await
        .unwrap();
    let kinds: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(
        kinds,
        [
            "expired",
            "expired_in_place",
            "revoked",
            "rotated",
            "security_events",
            "sessions"
        ]
    );
    let column_type = |table: &str, column: &str| {
        let (table, column) = (table.to_string(), column.to_string());
        let client = &db.client;
        async move {
            client
                .query_opt(
                    "SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a
                     WHERE a.attrelid = $1::text::regclass AND a.attname = $2 AND NOT a.attisdropped",
                    &[&table, &column],
                )
                .await
                .unwrap()
                .map(|r| r.get::<_, String>(0))
        }
    };
    for row in &rows {
        let (kind, shape, relation): (&str, &str, &str) = (row.get(0), row.get(1), row.get(2));
        assert!(
            ["range", "through", "oldest", "emptied"].contains(&shape),
            "{kind}: shape {shape}"
        );
        if let Some(key) = row.get::<_, Option<&str>>(3) {
            // A 'through' kind orders the sessions its rows belong to.
            let keyed = if shape == "through" {
                "auth.sessions"
            } else {
                relation
            };
            assert_eq!(
                column_type(keyed, key).await.as_deref(),
                Some("timestamp with time zone"),
                "{kind}: key {relation}.{key}"
            );
        }
        for column in row.get::<_, Vec<String>>(6) {
            assert!(
                column_type(relation, &column).await.is_some(),
                "{kind}: row_key {relation}.{column}"
            );
        }
        let run_column: &str = row.get(4);
        assert_eq!(
            column_type("auth.cleanup_runs", run_column)
                .await
                .as_deref(),
            Some("bigint"),
            "{kind}: run column {run_column}"
        );
        for setting in row.get::<_, Vec<String>>(5) {
            assert_eq!(
                column_type("auth.cleanup_policy", &setting)
                    .await
                    .as_deref(),
                Some("interval"),
                "{kind}: retention {setting}"
            );
        }
        assert!(
            row.get::<_, &str>(7).contains("$1"),
            "{kind}: due has no cutoff"
        );
    }
}

/// A run counts each kind under its name, and into the column its
/// definition names (the kinds that share one, added up), and status shows
/// every kind of the last run (JSON and Prometheus), in target order.
#[tokio::test]
async fn the_run_and_status_count_every_kind_by_its_definition() {
    let db = TestDb::migrated().await;
    let c = &db.client;
    // One due row of each kind a batch deletes by itself, and the sessions
    // the expired and revoked ones empty.
    c.batch_execute(
        "INSERT INTO auth.sessions (id, user_id, created_at, generation, refresh_expires_at, revoked_at,
                                    revoke_reason)
         VALUES ('00000000-0000-0000-0000-00000000000a', 'u', now() - interval '400 days', 2,
                 now() - interval '300 days', now() - interval '300 days', 'logout'),
                ('00000000-0000-0000-0000-00000000000b', 'u', now() - interval '400 days', 0,
                 now() - interval '300 days', NULL, NULL);
         INSERT INTO auth.refresh_tokens (session_id, generation, token_hash, issued_at, expires_at,
                                          rotates_in_place)
         VALUES ('00000000-0000-0000-0000-00000000000b', 0, sha256('d'), now() - interval '400 days',
                 now() - interval '300 days', true);
         INSERT INTO auth.refresh_tokens (session_id, generation, token_hash, issued_at, expires_at,
                                          revoked_at, revoke_reason)
         VALUES ('00000000-0000-0000-0000-00000000000a', 0, sha256('a'), now() - interval '400 days',
                 now() - interval '300 days', now() - interval '390 days', 'rotated'),
                ('00000000-0000-0000-0000-00000000000a', 1, sha256('b'), now() - interval '390 days',
                 now() + interval '1 day', now() - interval '300 days', 'logout'),
                ('00000000-0000-0000-0000-00000000000a', 2, sha256('c'), now() - interval '390 days',
                 now() - interval '300 days', NULL, NULL);
         INSERT INTO auth.security_events (occurred_at, session_id, user_id, generation, kind)
         VALUES (now() - interval '200 days', '00000000-0000-0000-0000-00000000000a', 'u', 0, 'reuse_detected');",
    )
    .await
    .unwrap();
    c.batch_execute("CALL auth.run_token_cleanup()")
        .await
        .unwrap();
    let counted: Vec<String> = column(
        c,
        "SELECT t.kind || '=' || (r.deleted_by_kind ->> t.kind) || ' ' || t.run_column || '='
                || (to_jsonb(r) ->> t.run_column)
         FROM auth.cleanup_runs r, auth.purge_targets() WITH ORDINALITY t
         WHERE r.status = 'ok' ORDER BY t.ordinality",
    )
    .await;
    // The rotated row is expired too: counted once, under the first kind.
    assert_eq!(
        counted,
        [
            "expired=2 expired_deleted=3",
            "expired_in_place=1 expired_deleted=3",
            "revoked=1 revoked_deleted=1",
            "rotated=0 rotated_deleted=0",
            "security_events=1 security_events_deleted=1",
            "sessions=2 sessions_deleted=2"
        ]
    );

    let url = cli_url(&db.url, "postgres");
    let out = run_cli_ok(&["status", "--json"], &url).await;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let run = &json["runs"][0];
    for (kind, rows) in [
        ("expired", 2),
        ("expired_in_place", 1),
        ("revoked", 1),
        ("rotated", 0),
        ("sessions", 2),
        ("security_events", 1),
    ] {
        assert_eq!(run[kind], rows, "{kind} in {run}");
    }
    let backlog: Vec<&str> = json["backlog"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        backlog,
        [
            "expired",
            "expired_in_place",
            "revoked",
            "rotated",
            "security_events"
        ]
    );
    let out = run_cli_ok(&["status", "--format", "prometheus"], &url).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("token_janitor_last_run_deleted_rows{kind=\"security_events\"} 1"),
        "{text}"
    );
}

/// A run executes the statements `explain_purge` plans: auth._purge_step,
/// compiled by migrate, holds `_purge_statement`'s text for every step of
/// every 'range' and 'through' kind. Its bound queries run on a generic plan (it pins
/// plan_cache_mode), which on a populated, analyzed table is an index-only
/// scan too, as planned with values.
#[tokio::test]
async fn the_compiled_steps_are_the_planned_statements_and_bounds_stay_index_scans() {
    let db = TestDb::migrated().await;
    seed_families(&db.client, 2000, 5).await;
    db.client
        .batch_execute("ANALYZE auth.refresh_tokens, auth.sessions")
        .await
        .unwrap();
    let compiled: String = db
        .client
        .query_one(
            "SELECT prosrc FROM pg_proc WHERE oid = 'auth._purge_step'::regproc",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let steps = db
        .client
        .query(
            "SELECT t.kind, s.step, auth._purge_statement(t.kind, s.step)
             FROM auth.purge_targets() t
             CROSS JOIN unnest(auth._purge_steps(t.shape)) s (step)
             WHERE t.shape IN ('range', 'through')",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        steps.len(),
        34,
        "3 'range' kinds x 9 steps + 1 'through' kind x 7 (no page steps)"
    );
    // The plan modes hold whatever the database or role sets: deletes on a
    // custom plan with plain index scans off, each bound step generic.
    let settings: Vec<String> = column(
        &db.client,
        "SELECT unnest(proconfig) FROM pg_proc WHERE oid = 'auth._purge_step'::regproc",
    )
    .await;
    // (Bitmap scans are on there, and only page steps turn them off, within
    // the call: the setting is pinned so that it is restored when it ends.)
    for pinned in [
        "plan_cache_mode=force_custom_plan",
        "enable_indexscan=off",
        "enable_bitmapscan=on",
    ] {
        assert!(
            settings.iter().any(|s| s == pinned),
            "{pinned}: {settings:?}"
        );
    }
    assert_eq!(
        compiled.matches("'enable_bitmapscan', 'off'").count(),
        steps
            .iter()
            .filter(|r| r.get::<_, &str>(1).starts_with("pages"))
            .count(),
        "bitmap scans off for each page step"
    );
    assert_eq!(
        compiled.matches("'force_generic_plan'").count(),
        steps
            .iter()
            .filter(|r| r.get::<_, &str>(1).ends_with("bound"))
            .count(),
        "one generic plan setting per bound step"
    );
    for row in &steps {
        let (kind, step, statement): (&str, &str, &str) = (row.get(0), row.get(1), row.get(2));
        assert!(
            compiled.contains(statement),
            "{kind}/{step} is not compiled as planned: {statement}"
        );
        if step.ends_with("bound") {
            db.client
                .batch_execute(&format!(
                    "BEGIN;
                     SET LOCAL plan_cache_mode = force_generic_plan;
                     SET LOCAL enable_seqscan = off;
                     PREPARE generic_bound (timestamptz, auth.purge_position, bigint, uuid[],
                                            auth.purge_position, timestamptz) AS {statement};"
                ))
                .await
                .unwrap();
            let plan = column::<String>(
                &db.client,
                "EXPLAIN EXECUTE generic_bound (now(), NULL, 10, NULL, auth._purge_start(), now())",
            )
            .await
            .join("\n");
            db.client
                .batch_execute("DEALLOCATE generic_bound; ROLLBACK")
                .await
                .unwrap();
            assert!(
                plan.contains("Index Only Scan") && !plan.contains("Sort"),
                "{kind}/{step} generic plan:\n{plan}"
            );
        }
    }
}
