//! `auth.purge_refresh_tokens` against the model of docs/design.md §5
//! (tests/common/due.rs): exactly the due rows go, counted by kind, to the
//! second; live tokens never; breach detection survives the purge.

mod common;

use std::collections::BTreeSet;
use std::time::SystemTime;

use common::*;
use rstest::rstest;

/// A family whose session's revocation is `revoked` and whose tokens are
/// one (expires_at, revocation) per generation, at seconds from T0.
fn family(revoked: Option<(i64, Reason)>, tokens: &[(i64, Option<(i64, Reason)>)]) -> Family {
    let revocation = |r: Option<(i64, Reason)>| r.map(|(t, reason)| reason.at(at(t)));
    let tokens = tokens
        .iter()
        .map(|&(expires_at, revoked)| TokenRow {
            expires_at: at(expires_at),
            revoked: revocation(revoked),
        })
        .collect();
    Family {
        revoked: revocation(revoked),
        ..Family::new("u", at(-60 * DAY), tokens)
    }
}

/// Families and tokens in every state, with timestamps a second either side
/// of each retention boundary at `now`.
fn world(policy: Policy, now: i64) -> Vec<Family> {
    let mut families = Vec::new();
    let far = now + 30 * DAY;
    for offset in -2..=2 {
        let (e, r, t) = (
            now - policy.expired + offset,
            now - policy.revoked + offset,
            now - policy.rotated + offset,
        );
        // A family whose only token expired around the boundary.
        families.push(family(None, &[(e, None)]));
        // A family logged out around the boundary.
        let logout = Some((r, Reason::Logout));
        families.push(family(logout, &[(far, logout)]));
        // A live family whose generation 0 was rotated around the boundary.
        families.push(family(
            None,
            &[(far, Some((t, Reason::Rotated))), (far, None)],
        ));
        // A family revoked for reuse around the boundary, with a rotated row.
        let reuse = Some((r, Reason::ReuseDetected));
        families.push(family(
            reuse,
            &[(far, Some((r - 60, Reason::Rotated))), (far, reuse)],
        ));
    }
    // Live tokens at the edge: expiring exactly now, and in a second.
    for e in [now, now + 1] {
        families.push(family(None, &[(e, None)]));
    }
    // An expired token that was also revoked by an admin long ago.
    let old = now - policy.expired - policy.revoked - DAY;
    let admin = Some((old - DAY, Reason::Admin));
    families.push(family(admin, &[(old, admin)]));
    families
}

async fn surviving(
    client: &tokio_postgres::Client,
) -> (BTreeSet<(uuid::Uuid, i32)>, BTreeSet<uuid::Uuid>) {
    let tokens = client
        .query(
            "SELECT session_id, generation FROM auth.refresh_tokens",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let sessions = column(client, "SELECT id FROM auth.sessions").await;
    (tokens, sessions.into_iter().collect())
}

/// What the model says a purge of `families` (seeded as `ids`) at `now`
/// leaves: due rows per kind (expired, revoked, rotated), and the tokens and
/// sessions that stay.
fn model(
    families: &[Family],
    ids: &[uuid::Uuid],
    policy: Policy,
    now: i64,
) -> ([i64; 3], BTreeSet<(uuid::Uuid, i32)>, BTreeSet<uuid::Uuid>) {
    let mut expected = [0i64; 3];
    let mut tokens_left = BTreeSet::new();
    for (id, family) in ids.iter().zip(families) {
        for (generation, token) in family.tokens.iter().enumerate() {
            match token.due(policy, at(now)) {
                Some(Kind::Expired) => expected[0] += 1,
                Some(Kind::Revoked) => expected[1] += 1,
                Some(Kind::Rotated) => expected[2] += 1,
                None => {
                    tokens_left.insert((*id, generation as i32));
                }
            }
        }
    }
    let sessions_left = ids
        .iter()
        .zip(families)
        .filter(|(id, f)| {
            let has_tokens = tokens_left.iter().any(|(s, _)| s == *id);
            !f.session().due(policy, at(now), has_tokens)
        })
        .map(|(id, _)| *id)
        .collect();
    (expected, tokens_left, sessions_left)
}

/// Invariants 1 and 2: exactly the model's due rows are deleted, counted by
/// kind, a second either side of every boundary, for default and zero
/// retention, in one call and in small batches.
#[rstest]
#[case::defaults_all_at_once(Policy::DEFAULT, None)]
#[case::defaults_in_batches_of_3(Policy::DEFAULT, Some(3))]
#[case::zero_retention(Policy { expired: 0, revoked: 0, rotated: 0 }, None)]
#[case::zero_retention_in_batches_of_1(Policy { expired: 0, revoked: 0, rotated: 0 }, Some(1))]
#[case::rotated_kept_longer_than_revoked(Policy { expired: HOUR, revoked: HOUR, rotated: 2 * DAY }, Some(4))]
#[tokio::test]
async fn exactly_the_due_rows_are_deleted(#[case] policy: Policy, #[case] limit: Option<i32>) {
    let db = TestDb::migrated().await;
    let c = &db.client;
    policy.apply(c).await;
    let now = 100 * DAY;
    let families = world(policy, now);
    let ids = seed(c, &families).await;

    let (expected, tokens_left, sessions_left) = model(&families, &ids, policy, now);
    assert!(
        expected.iter().all(|&n| n > 0),
        "the world has rows of every kind due: {expected:?}"
    );

    let mut total = (0, 0, 0, 0);
    loop {
        let (e, r, t, s) = purge(c, at(now), limit).await;
        if let Some(limit) = limit {
            assert!(
                e + r + t <= limit as i64,
                "a batch deletes at most p_limit rows"
            );
        }
        total = (total.0 + e, total.1 + r, total.2 + t, total.3 + s);
        if e + r + t + s == 0 {
            break;
        }
    }
    assert_eq!(
        (total.0, total.1, total.2),
        (expected[0], expected[1], expected[2])
    );
    assert_eq!(total.3, (families.len() - sessions_left.len()) as i64);
    assert_eq!(surviving(c).await, (tokens_left, sessions_left));
}

/// Invariant 1 through the lifecycle functions: with zero retention, a purge
/// at any moment leaves every live token and its session rotatable.
#[tokio::test]
async fn live_tokens_survive_zero_retention() {
    let db = TestDb::migrated().await;
    let c = &db.client;
    Policy {
        expired: 0,
        revoked: 0,
        rotated: 0,
    }
    .apply(c)
    .await;
    let mut families = Vec::new();
    for i in 0..20 {
        let s = issue(c, "u", &format!("{i}-0"), HOUR, at(0)).await;
        for g in 0..(i % 4) {
            let outcome = rotate(
                c,
                s,
                g,
                &format!("{i}-{g}"),
                &format!("{i}-{}", g + 1),
                HOUR,
                at(60 * (g as i64 + 1)),
            )
            .await;
            assert_eq!(outcome, "rotated");
        }
        families.push((s, i % 4, i));
    }
    // The newest tokens expire at 60*gen + 1h: purge exactly at the earliest expiry.
    let now = HOUR;
    purge(c, at(now), None).await;
    for (s, g, i) in families {
        let outcome = rotate(c, s, g, &format!("{i}-{g}"), "next", HOUR, at(now)).await;
        assert_eq!(outcome, "rotated", "family {i} lost its live token");
    }
}

/// Invariant 3: replaying a rotated token reads reuse_detected before and
/// after its row is purged, and a purge never turns a rejection into an
/// acceptance.
#[rstest]
#[tokio::test]
async fn breach_detection_survives_the_purge(#[values(false, true)] history: bool) {
    let db = TestDb::migrated().await;
    let c = &db.client;
    set_token_history(c, history).await;
    let victim = issue(c, "v", "g0", 30 * DAY, at(0)).await;
    assert_eq!(
        rotate(c, victim, 0, "g0", "g1", 30 * DAY, at(15 * MINUTE)).await,
        "rotated"
    );
    assert_eq!(
        rotate(c, victim, 1, "g1", "g2", 30 * DAY, at(30 * MINUTE)).await,
        "rotated"
    );

    // Before the purge, inside a transaction that is rolled back: reuse.
    let before = {
        c.batch_execute("BEGIN").await.unwrap();
        let outcome = rotate(c, victim, 0, "g0", "x", 30 * DAY, at(3 * HOUR)).await;
        c.batch_execute("ROLLBACK").await.unwrap();
        outcome
    };
    assert_eq!(before, "reuse_detected");
    // With no row for generation 0 (rotated in place), a token is proven
    // by its authenticator alone, and `rotate` computes a genuine one for
    // any hash: the key holder's token, so reuse, as after the purge below.
    c.batch_execute("BEGIN").await.unwrap();
    assert_eq!(
        rotate(c, victim, 0, "nope", "x", 30 * DAY, at(3 * HOUR)).await,
        if history { "invalid" } else { "reuse_detected" }
    );
    c.batch_execute("ROLLBACK").await.unwrap();

    let (_, _, rotated, _) = purge(c, at(2 * HOUR), None).await;
    assert_eq!(
        rotated,
        if history { 2 } else { 0 },
        "generations 0 and 1 are gone"
    );
    // The one documented change: a wrong hash for a purged generation.
    c.batch_execute("BEGIN").await.unwrap();
    assert_eq!(
        rotate(c, victim, 0, "nope", "x", 30 * DAY, at(3 * HOUR)).await,
        "reuse_detected"
    );
    c.batch_execute("ROLLBACK").await.unwrap();
    // Unknown generations stay unknown, the live token still works once.
    assert_eq!(
        rotate(c, victim, 7, "g7", "x", 30 * DAY, at(3 * HOUR)).await,
        "unknown"
    );
    assert_eq!(
        rotate(c, victim, 1, "g1", "x", 30 * DAY, at(3 * HOUR)).await,
        "reuse_detected"
    );
    // The replay revoked the family: the holder of g2 is out, before and after purges.
    assert_eq!(
        rotate(c, victim, 2, "g2", "g3", 30 * DAY, at(3 * HOUR)).await,
        "revoked"
    );
    purge(c, at(3 * HOUR), None).await;
    assert_eq!(
        rotate(c, victim, 0, "g0", "x", 30 * DAY, at(4 * HOUR)).await,
        "reuse_detected"
    );
    assert_eq!(
        rotate(c, victim, 2, "g2", "g3", 30 * DAY, at(4 * HOUR)).await,
        "revoked"
    );
    // Once the whole family is purged, everything about it is unknown, never accepted.
    purge(c, at(40 * DAY), None).await;
    assert_eq!(counts(c).await, (0, 0));
    assert_eq!(
        rotate(c, victim, 2, "g2", "g3", 30 * DAY, at(40 * DAY)).await,
        "unknown"
    );
}

/// Rows revoked at the same instant (a user-wide revocation) still purge in
/// batches of exactly p_limit.
#[tokio::test]
async fn ties_on_the_timestamp_still_make_full_batches() {
    let db = TestDb::migrated().await;
    let c = &db.client;
    for i in 0..25 {
        issue(c, "same", &format!("t{i}"), 30 * DAY, at(0)).await;
    }
    c.query_one(
        "SELECT auth.revoke_user_sessions(p_user_id => 'same', p_now => $1)",
        &[&at(MINUTE)],
    )
    .await
    .unwrap();
    let now: SystemTime = at(8 * DAY);
    assert_eq!(purge(c, now, Some(10)).await, (0, 10, 0, 10));
    assert_eq!(purge(c, now, Some(10)).await, (0, 10, 0, 10));
    assert_eq!(purge(c, now, Some(10)).await, (0, 5, 0, 5));
    assert_eq!(purge(c, now, Some(0)).await, (0, 0, 0, 0));
    assert_eq!(counts(c).await, (0, 0));
}

/// A mass revocation at scale: 3,000 families whose three rotated
/// generations were all revoked at one instant, 1,000 sessions revoked
/// 'admin' at that instant and 1,000 whose only token expired at one
/// instant: 11,000 due rows on two timestamps, 3,000 live tokens (which
/// expire years from now).
async fn seed_mass_revocation(c: &tokio_postgres::Client) {
    let (t0, revoked, far) = (at(0), at(MINUTE), at(3650 * DAY));
    let families: Vec<Family> = (1..=5000)
        .map(|i| {
            let user = format!("mass-{i}");
            match i {
                1..=3000 => {
                    let mut tokens = vec![
                        TokenRow {
                            expires_at: far,
                            revoked: Some(Reason::Rotated.at(revoked)),
                        };
                        3
                    ];
                    tokens.push(TokenRow::expiring(far));
                    Family::new(user, t0, tokens)
                }
                3001..=4000 => {
                    let admin = Reason::Admin.at(revoked);
                    let token = TokenRow {
                        expires_at: far,
                        revoked: Some(admin),
                    };
                    Family {
                        revoked: Some(admin),
                        ..Family::new(user, t0, vec![token])
                    }
                }
                _ => Family::new(user, t0, vec![TokenRow::expiring(t0)]),
            }
        })
        .collect();
    seed(c, &families).await;
}

/// The live tokens: (sessions, rows, rows that are generation 3).
async fn live_tokens(c: &tokio_postgres::Client) -> (i64, i64, i64) {
    let row = c
        .query_one(
            "SELECT count(DISTINCT session_id), count(*), count(*) FILTER (WHERE generation = 3)
             FROM auth.refresh_tokens WHERE revoked_at IS NULL AND expires_at > now()",
            &[],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1), row.get(2))
}

/// Thousands of due rows on one timestamp split between batches at exactly
/// p_limit rows each, kind after kind, and no live row goes.
#[tokio::test]
async fn thousands_of_rows_on_one_timestamp_purge_in_exact_batches() {
    let db = TestDb::migrated().await;
    let c = &db.client;
    seed_mass_revocation(c).await;
    assert_eq!(counts(c).await, (5000, 14_000));
    let now = at(8 * DAY);
    let mut totals = (0, 0, 0, 0);
    let mut batches = Vec::new();
    loop {
        let (e, r, t, s) = purge(c, now, Some(700)).await;
        if e + r + t == 0 {
            break;
        }
        batches.push(e + r + t);
        totals = (totals.0 + e, totals.1 + r, totals.2 + t, totals.3 + s);
        assert_eq!(live_tokens(c).await, (3000, 3000, 3000));
    }
    assert_eq!(totals, (1000, 1000, 9000, 2000));
    let mut expected = vec![700; 15];
    expected.push(500);
    assert_eq!(batches, expected);
    assert_eq!(counts(c).await, (3000, 3000));
}

/// The same in a scheduled run, whose batches resume where the last one
/// ended: every count recorded exactly, nothing due left, every live token
/// still there.
/// A run in whole batches of `batch_size` from the first (a paced run
/// starts with small ones); `columns` of its record.
async fn run_in_batches_of(
    c: &tokio_postgres::Client,
    batch_size: i32,
    columns: &str,
) -> tokio_postgres::Row {
    c.execute(
        "UPDATE auth.cleanup_policy SET batch_size = $1, pace = false",
        &[&batch_size],
    )
    .await
    .unwrap();
    c.batch_execute("CALL auth.run_token_cleanup()")
        .await
        .unwrap();
    c.query_one(
        &format!("SELECT {columns} FROM auth.cleanup_runs ORDER BY id DESC LIMIT 1"),
        &[],
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn a_run_purges_thousands_of_rows_on_one_timestamp_across_batches() {
    let db = TestDb::migrated().await;
    let c = &db.client;
    seed_mass_revocation(c).await;
    let run = run_in_batches_of(
        c,
        100,
        "status, batches, expired_deleted, revoked_deleted, rotated_deleted, sessions_deleted",
    )
    .await;
    let recorded: (&str, i32, i64, i64, i64, i64) = (
        run.get(0),
        run.get(1),
        run.get(2),
        run.get(3),
        run.get(4),
        run.get(5),
    );
    // 110 batches of exactly 100 rows: one row more a batch would make 109.
    assert_eq!(recorded, ("ok", 110, 1000, 1000, 9000, 2000));
    assert_eq!(live_tokens(c).await, (3000, 3000, 3000));
    assert_eq!(counts(c).await, (3000, 3000));
}

/// 2,000 families of five tokens, every family's rows together in the heap
/// in primary-key order (CLUSTER: as after a restore), generations 0-3
/// rotated at distinct times in generation order (so the heap does not
/// follow revoked_at) and generation 4 live; the first `expired_families`
/// expired as a whole, months ago, at distinct times in generation order.
async fn seed_in_primary_key_order(
    c: &tokio_postgres::Client,
    expired_families: usize,
) -> (Vec<Family>, Vec<uuid::Uuid>) {
    let far = at(3650 * DAY);
    let families: Vec<Family> = (0..2000i64)
        .map(|i| {
            let expires = |g: i64| {
                if (i as usize) < expired_families {
                    at(DAY + g * 2000 + i)
                } else {
                    far
                }
            };
            let mut tokens: Vec<TokenRow> = (0..4i64)
                .map(|g| TokenRow {
                    expires_at: expires(g),
                    revoked: Some(Reason::Rotated.at(at(HOUR + g * 2000 + i))),
                })
                .collect();
            tokens.push(TokenRow::expiring(expires(4)));
            Family::new(format!("pk-{i}"), at(0), tokens)
        })
        .collect();
    let ids = seed(c, &families).await;
    c.batch_execute(
        "CLUSTER auth.refresh_tokens USING refresh_tokens_pkey;
         ANALYZE auth.refresh_tokens",
    )
    .await
    .unwrap();
    (families, ids)
}

/// `t` as seconds from T0, the clock of `at`.
fn seconds_since_t0(t: SystemTime) -> i64 {
    t.duration_since(at(0)).unwrap().as_secs() as i64
}

/// Whether a run would delete `kind` in page order at `now`.
async fn page_order(c: &tokio_postgres::Client, kind: &str, now: i64) -> bool {
    c.query_one(
        "SELECT auth._purge_order($1, auth._purge_cutoffs(p, t.retentions, $2))
         FROM auth.cleanup_policy p, auth.purge_targets($1) t",
        &[&kind, &at(now)],
    )
    .await
    .unwrap()
    .get(0)
}

/// On a heap in primary-key order (random session ids: the heap follows no
/// timestamp) with most rows of a kind due, a run's batches of that kind
/// sweep the heap in page order (auth._purge_order): every position they
/// hand on is a page (no key, no session id). They delete exactly the
/// model's due rows but one an update moved behind the sweep (a revocation
/// of an expired token), which the next run deletes, and no live token; a batch is bounded by pages: it
/// reads at most the pages that hold 2 x batch_size rows at the table's
/// average density, and deletes about batch_size rows (a page denser than
/// the average adds a few);
/// rotated rows (no RETURNING) and expired rows (whose deletes return the
/// sessions they empty) both. One-off purge_refresh_tokens calls keep the
/// key order (each starts from the first key) and return 0 only when nothing
/// is due; a run after a 'partial' one keeps the key order too.
#[rstest]
#[case::rotated(0, "rotated")]
#[case::expired(1600, "expired")]
#[tokio::test]
async fn a_heap_that_follows_no_timestamp_is_purged_in_page_order(
    #[case] expired_families: usize,
    #[case] kind: &str,
) {
    let db = TestDb::migrated().await;
    let c = &db.client;
    // The server's clock, which the scheduled run below uses: every row
    // the seed revokes or expires is months past its retention by then.
    let now = seconds_since_t0(server_now(c).await);
    let (families, ids) = seed_in_primary_key_order(c, expired_families).await;
    assert!(page_order(c, kind, now).await, "{kind}");
    let (expected, tokens_left, sessions_left) = model(&families, &ids, Policy::DEFAULT, now);
    let density: f64 = c
        .query_one(
            "SELECT reltuples::float8 / relpages FROM pg_class WHERE oid = 'auth.refresh_tokens'::regclass",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let most_pages = (2.0 * 300.0 / density).ceil() as i32 + 2;

    // A run's batches, one transaction each, handing on their positions.
    c.batch_execute("CREATE TEMP TABLE run (resume auth.purge_position[])")
        .await
        .unwrap();
    c.batch_execute("INSERT INTO run VALUES (NULL)")
        .await
        .unwrap();
    let mut total = [0i64; 3];
    let mut batches = 0;
    let mut in_page_order = 0;
    let mut page = 0;
    let mut moved_behind = 0;
    loop {
        let row = c
            .query_one(
                "WITH b AS (SELECT * FROM auth._purge_batch($1, 300, (SELECT resume FROM run), NULL, true)),
                      u AS (UPDATE run SET resume = b.resume FROM b)
                 SELECT ARRAY[(b.deleted ->> 'expired')::bigint, (b.deleted ->> 'revoked')::bigint,
                              (b.deleted ->> 'rotated')::bigint],
                        b.drained,
                        (SELECT CASE WHEN (b.resume[t.n]).key IS NULL AND (b.resume[t.n]).session_id IS NULL
                                     THEN 'pages'
                                     WHEN (b.resume[t.n]).key = 'infinity' THEN 'drained'
                                     ELSE 'key' END
                         FROM auth.purge_targets() WITH ORDINALITY t (kind, shape, relation, key_column,
                              row_key, due, retentions, indexes, empties_sessions, run_column, n)
                         WHERE t.kind = $2),
                        (SELECT (b.resume[t.n]).generation
                         FROM auth.purge_targets() WITH ORDINALITY t (kind, shape, relation, key_column,
                              row_key, due, retentions, indexes, empties_sessions, run_column, n)
                         WHERE t.kind = $2)
                 FROM b",
                &[&at(now), &kind],
            )
            .await
            .unwrap();
        let deleted: Vec<i64> = row.get(0);
        let (drained, order): (bool, &str) = (row.get(1), row.get(2));
        assert!(
            deleted.iter().sum::<i64>() <= 360,
            "a batch deletes about batch_size rows: {deleted:?}"
        );
        if order == "pages" {
            let next: i32 = row.get(3);
            assert!(
                next - page <= most_pages,
                "batch {batches} read pages {page} to {next}, over {most_pages}"
            );
            page = next;
        }
        for (sum, d) in total.iter_mut().zip(&deleted) {
            *sum += d;
        }
        batches += 1;
        assert_ne!(order, "key", "batch {batches} went in key order");
        in_page_order += usize::from(order == "pages");
        if batches == 3 {
            // A due row the sweep has not reached moves behind it: a
            // revocation of an expired token (not a HOT update) on a full
            // page lands on a page the batches emptied and VACUUM handed
            // back.
            c.batch_execute("VACUUM auth.refresh_tokens").await.unwrap();
            let moved: i64 = c
                .query_one(
                    "WITH r AS (
                         UPDATE auth.refresh_tokens SET revoked_at = $1, revoke_reason = 'logout'
                         WHERE ctid = (SELECT min(ctid) FROM auth.refresh_tokens
                                       WHERE ctid >= ('(' || $2 + 5 || ',0)')::tid AND expires_at < $1
                                         AND revoked_at IS NULL)
                         RETURNING ctid)
                     SELECT (ctid::text::point)[0]::int8 FROM r",
                    &[&at(now), &page],
                )
                .await
                .map(|row| row.get(0))
                .unwrap_or(i64::MAX);
            if kind == "expired" {
                assert!(
                    moved < i64::from(page),
                    "the revoked row moved behind the sweep (page {moved}, sweep at {page})"
                );
                moved_behind = 1;
            }
        }
        if drained {
            break;
        }
    }
    assert!(
        in_page_order > 10,
        "{in_page_order} of {batches} batches in page order"
    );
    assert_eq!(
        total,
        [expected[0] - moved_behind, expected[1], expected[2]],
        "every due row that stayed in place"
    );
    c.batch_execute("CALL auth.run_token_cleanup()")
        .await
        .unwrap();
    assert_eq!(
        surviving(c).await,
        (tokens_left.clone(), sessions_left.clone()),
        "the next run deletes the moved row, and the sessions the batches emptied"
    );

    // One-off calls: key order, exactly the model's rows, 0 only at the end.
    let db = TestDb::migrated().await;
    let c = &db.client;
    let (families, ids) = seed_in_primary_key_order(c, expired_families).await;
    let (expected, tokens_left, sessions_left) = model(&families, &ids, Policy::DEFAULT, now);
    let mut total = [0i64; 4];
    loop {
        let (e, r, t, s) = purge(c, at(now), Some(700)).await;
        assert!(e + r + t <= 700, "a call deletes at most p_limit rows");
        total = [total[0] + e, total[1] + r, total[2] + t, total[3] + s];
        if e + r + t + s == 0 {
            break;
        }
    }
    assert_eq!(total[..3], expected);
    assert_eq!(total[3], (families.len() - sessions_left.len()) as i64);
    assert_eq!(surviving(c).await, (tokens_left, sessions_left));

    // A scheduled run, after one that ended 'partial' and then after an
    // 'ok' one.
    let db = TestDb::migrated().await;
    let c = &db.client;
    let (families, ids) = seed_in_primary_key_order(c, expired_families).await;
    c.batch_execute(
        "INSERT INTO auth.cleanup_runs (started_at, finished_at, status)
         VALUES (now() - interval '10 minutes', now() - interval '8 minutes', 'partial')",
    )
    .await
    .unwrap();
    assert!(!page_order(c, kind, now).await, "after a partial run");
    c.batch_execute(
        "INSERT INTO auth.cleanup_runs (started_at, finished_at, status)
         VALUES (now() - interval '5 minutes', now() - interval '4 minutes', 'ok')",
    )
    .await
    .unwrap();
    assert!(page_order(c, kind, now).await, "after an ok run");
    let (expected, tokens_left, sessions_left) = model(&families, &ids, Policy::DEFAULT, now);
    c.batch_execute("UPDATE auth.cleanup_policy SET batch_size = 300")
        .await
        .unwrap();
    c.execute("CALL auth.run_token_cleanup()", &[])
        .await
        .unwrap();
    let run = c
        .query_one(
            "SELECT status, ARRAY[expired_deleted, revoked_deleted, rotated_deleted]
             FROM auth.cleanup_runs ORDER BY id DESC LIMIT 1",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(run.get::<_, &str>(0), "ok");
    let deleted: Vec<i64> = run.get(1);
    assert_eq!(deleted, expected);
    assert_eq!(surviving(c).await, (tokens_left, sessions_left));
}

/// A heap that follows the kind's timestamp (a table filling in time order,
/// as in production) keeps the key's order, however much is due: its due
/// rows are already together at the start of the heap.
#[tokio::test]
async fn a_heap_in_time_order_keeps_the_key_order() {
    let db = TestDb::migrated().await;
    let c = &db.client;
    let now = seconds_since_t0(server_now(c).await);
    let far = at(3650 * DAY);
    let families: Vec<Family> = (0..2000i64)
        .map(|i| {
            Family::new(
                format!("time-{i}"),
                at(0),
                (0..9)
                    .map(|g| TokenRow {
                        expires_at: far,
                        revoked: Some(Reason::Rotated.at(at(HOUR + 9 * i + g))),
                    })
                    .chain([TokenRow::expiring(far)])
                    .collect(),
            )
        })
        .collect();
    seed(c, &families).await;
    c.batch_execute("ANALYZE auth.refresh_tokens")
        .await
        .unwrap();
    let due_share: f64 = c
        .query_one(
            "SELECT auth._purge_estimate('rotated', auth._purge_cutoffs(p, t.retentions, $1))
                    / c.reltuples::float8
             FROM auth.cleanup_policy p, auth.purge_targets('rotated') t, pg_class c
             WHERE c.oid = 'auth.refresh_tokens'::regclass",
            &[&at(now)],
        )
        .await
        .unwrap()
        .get(0);
    assert!(due_share > 0.6, "most rows are due: {due_share}");
    assert!(!page_order(c, "rotated", now).await);
}

#[tokio::test]
async fn a_negative_limit_is_refused() {
    let db = TestDb::migrated().await;
    let err = db
        .client
        .query(
            "SELECT * FROM auth.purge_refresh_tokens(p_limit => -1)",
            &[],
        )
        .await
        .unwrap_err();
    assert!(err.as_db_error().unwrap().message().contains("p_limit"));
}

/// Sessions issued through the SQL API at `issued` (seconds from T0) with
/// `ttl` (seconds), `n` of them, users `prefix`0.., each rotated in place
/// once `rotated_after` seconds later (0: not rotated): their token rows
/// rotate in place, and each session's floor is its first expiry.
async fn sessions_in_place(
    c: &tokio_postgres::Client,
    prefix: &str,
    n: usize,
    issued: i64,
    ttl: i64,
    rotated_after: i64,
) -> Vec<uuid::Uuid> {
    let mut ids = Vec::new();
    for k in 0..n {
        let user = format!("{prefix}{k}");
        let s = issue(c, &user, &format!("{user}/0"), ttl, at(issued + k as i64)).await;
        if rotated_after > 0 {
            let next = format!("{user}/1");
            let when = at(issued + k as i64 + rotated_after);
            assert_eq!(
                rotate(c, s, 0, &format!("{user}/0"), &next, ttl, when).await,
                "rotated"
            );
        }
        ids.push(s);
    }
    ids
}

/// A token row that rotates in place is in no index by its expiry: the
/// expired_in_place kind finds it through its session's floor, batch by
/// batch (a purge call never deletes more than its limit), deletes it once
/// its own expiry is past expired_retention (the floor lags: not a second
/// before) and purge_refresh_tokens counts it under `expired`.
#[tokio::test]
async fn rows_that_rotate_in_place_expire_through_their_session() {
    let db = TestDb::migrated().await;
    let c = &db.client;
    // 25 expire at DAY + k; 5 more, rotated 10 hours on, at 34 hours + k,
    // their floors still at DAY + k.
    sessions_in_place(c, "a", 25, 0, DAY, 0).await;
    sessions_in_place(c, "b", 5, 100, DAY, 10 * HOUR).await;
    assert_eq!(
        column::<i64>(
            c,
            "SELECT count(*) FROM auth.refresh_tokens WHERE rotates_in_place"
        )
        .await,
        [30]
    );
    let by_kind = |now: SystemTime, limit: Option<i32>| async move {
        let row = c
            .query_one(
                "SELECT expired, sessions, by_kind ->> 'expired', by_kind ->> 'expired_in_place'
                 FROM auth.purge_refresh_tokens(p_now => $1, p_limit => $2)",
                &[&now, &limit],
            )
            .await
            .unwrap();
        let counts: (i64, i64, Option<String>, Option<String>) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        counts
    };
    // At the first expiry's cutoff: nothing yet.
    assert_eq!(
        by_kind(at(2 * DAY), None).await,
        (0, 0, Some("0".into()), Some("0".into()))
    );
    // Past every first expiry: 25 of them, 7 at most a call, the 5 lagging
    // sessions (past the cutoff by their floor, not their expiry) kept.
    let now = at(2 * DAY + 200);
    let mut deleted = Vec::new();
    loop {
        let (expired, sessions, _, in_place) = by_kind(now, Some(7)).await;
        assert_eq!(in_place.as_deref(), Some(expired.to_string().as_str()));
        assert_eq!(sessions, expired, "each emptied session goes with its row");
        if expired == 0 {
            break;
        }
        deleted.push(expired);
    }
    assert_eq!(deleted, [7, 7, 7, 4]);
    assert_eq!(counts(c).await, (5, 5));
    // The lagging ones by their expiry, to the second.
    let last = 100 + 4 + 10 * HOUR + DAY + DAY;
    assert_eq!(purge(c, at(last), None).await, (4, 0, 0, 4));
    assert_eq!(purge(c, at(last + 1), None).await, (1, 0, 0, 1));
    assert_eq!(counts(c).await, (0, 0));
}

/// A run's batch reads at most twice its batch size of sessions whose floor
/// is past the cutoff and finds no due row there (expired, but not for
/// expired_retention yet, their floors lagging): it goes on from there in
/// the next batch, and the run deletes exactly the due rows on both sides
/// of them and ends 'ok'.
#[tokio::test]
async fn a_run_walks_past_sessions_whose_floor_lags_their_expiry() {
    let db = TestDb::migrated().await;
    let c = &db.client;
    let now = SystemTime::now();
    let ago = |s: i64| now - std::time::Duration::from_secs(s as u64);
    let secs = |t: SystemTime| t.duration_since(at(0)).unwrap().as_secs() as i64;
    // In floor order: 5 due (expired two days ago), 40 expired 20 hours ago
    // whose floors are 6 hours before that (past the cutoff), 5 due
    // (expired 26 hours ago), and 10 live.
    sessions_in_place(c, "early", 5, secs(ago(3 * DAY)), DAY, 0).await;
    sessions_in_place(c, "lag", 40, secs(ago(2 * DAY + 6 * HOUR)), DAY, 10 * HOUR).await;
    sessions_in_place(c, "late", 5, secs(ago(2 * DAY + 2 * HOUR)), DAY, 0).await;
    sessions_in_place(c, "live", 10, secs(ago(HOUR)), DAY, 0).await;
    let run = run_in_batches_of(
        c,
        5,
        "status, batches, expired_deleted, sessions_deleted,
         (deleted_by_kind ->> 'expired_in_place')::int8",
    )
    .await;
    let recorded: (&str, i32, i64, i64, i64) =
        (run.get(0), run.get(1), run.get(2), run.get(3), run.get(4));
    // Batches: 5 early; 4 of 10 lagging sessions each; then the 5 late.
    assert_eq!(recorded, ("ok", 6, 10, 10, 10));
    let left: Vec<String> = column(
        c,
        "SELECT DISTINCT regexp_replace(user_id, '[0-9]+$', '') FROM auth.sessions ORDER BY 1",
    )
    .await;
    assert_eq!(left, ["lag", "live"]);
    assert_eq!(counts(c).await, (50, 50));
}
