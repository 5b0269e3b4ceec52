//! plpgsql_check (Debian's postgresql-15-plpgsql-check) over every PL/pgSQL
//! routine in schema auth, with extra, performance and security warnings on:
//! no error and no warning. A hint that does not apply is switched off in
//! the routine itself (`PERFORM 'PRAGMA:disable:…'`) with a comment saying why.

mod common;

use common::*;

#[tokio::test]
async fn every_plpgsql_routine_passes_plpgsql_check() {
    let db = TestDb::migrated().await;
    db.client
        .batch_execute("CREATE EXTENSION plpgsql_check")
        .await
        .expect("plpgsql_check is installed (scripts/pg.sh installs postgresql-15-plpgsql-check)");
    let checked: Vec<i64> = column(
        &db.client,
        "SELECT count(*) FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang
         WHERE p.pronamespace = 'auth'::regnamespace AND l.lanname = 'plpgsql'",
    )
    .await;
    assert!(checked[0] >= 40, "{checked:?} routines");
    let findings: Vec<String> = column(
        &db.client,
        "SELECT p.oid::regprocedure || ' line ' || coalesce(r.lineno::text, '-') || ': ' || r.level
                || ': ' || r.message || coalesce(' (' || r.detail || ')', '')
         FROM pg_proc p
         JOIN pg_language l ON l.oid = p.prolang AND l.lanname = 'plpgsql'
         CROSS JOIN LATERAL plpgsql_check_function_tb(
             p.oid,
             relid => coalesce((SELECT t.tgrelid FROM pg_trigger t WHERE t.tgfoid = p.oid LIMIT 1), 0),
             extra_warnings => true, performance_warnings => true, security_warnings => true) r
         WHERE p.pronamespace = 'auth'::regnamespace
         ORDER BY 1",
    )
    .await;
    assert!(findings.is_empty(), "{}", findings.join("\n"));
}
