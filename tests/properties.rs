//! Property tests: random histories of issue / rotate / replay / revoke /
//! purge over random clocks and policies (zero retention included), checked
//! after every step against docs/design.md §5 (its model is
//! tests/common/due.rs):
//! - a purge deletes no live token and nothing before its retention, and
//!   exactly the dead sessions it emptied;
//! - a presented token that was rejected is never accepted later;
//! - a rotated token's replay reads reuse_detected while its session exists,
//!   before and after its row is purged;
//! - a forgery (a known session id and generation, no secret, in either
//!   token format) is never accepted and never revokes a family.
//!
//! The reuse grace is off here (tests/grace.rs covers it): with it, a replay
//! of the immediate predecessor right after a rotation is, by design, not
//! reuse.
//!
//! A failing case shrinks to a short, readable list of steps.

mod common;

use std::collections::BTreeMap;
use std::time::SystemTime;

use common::*;
use proptest::prelude::*;
use tokio_postgres::Client;
use uuid::Uuid;

#[derive(Debug, Clone)]
enum Step {
    /// A user logs in.
    Issue { user: u8, ttl_h: u8 },
    /// The holder of a family's newest token refreshes.
    Rotate { family: u8 },
    /// Someone presents an older (or newer) generation of a family: its
    /// holder (the real hash and authenticator), or a forger who knows the
    /// session id but no secret (a wrong hash, and a random authenticator or,
    /// `legacy`, none, as an rt1_ token has).
    Present {
        family: u8,
        back: u8,
        forward: bool,
        wrong_hash: bool,
        legacy: bool,
    },
    /// Logout of one family, or an admin revoking a user's families.
    Revoke { family: u8, whole_user: bool },
    /// The purge, with or without a row limit.
    Purge { limit: Option<u8> },
    /// Time passes.
    Advance { minutes: u16 },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (0..4u8, 1..48u8).prop_map(|(user, ttl_h)| Step::Issue { user, ttl_h }),
        6 => any::<u8>().prop_map(|family| Step::Rotate { family }),
        3 => (any::<u8>(), 1..4u8, any::<bool>(), any::<bool>(), any::<bool>())
            .prop_map(|(family, back, forward, wrong_hash, legacy)| Step::Present { family, back, forward, wrong_hash, legacy }),
        1 => (any::<u8>(), any::<bool>()).prop_map(|(family, whole_user)| Step::Revoke { family, whole_user }),
        3 => proptest::option::of(1..6u8).prop_map(|limit| Step::Purge { limit }),
        4 => prop_oneof![0..90u16, 0..3000u16, 0..12000u16].prop_map(|minutes| Step::Advance { minutes }),
    ]
}

fn policy() -> impl Strategy<Value = Policy> {
    let retention = prop_oneof![
        Just(0i64),
        Just(1),
        Just(60),
        Just(HOUR),
        Just(DAY),
        Just(7 * DAY)
    ];
    (retention.clone(), retention.clone(), retention).prop_map(|(expired, revoked, rotated)| {
        Policy {
            expired,
            revoked,
            rotated,
        }
    })
}

/// A token as its holder has it: the hash of its secret and its authenticator.
#[derive(Debug, Clone)]
struct Token {
    hash: Vec<u8>,
    authenticator: Option<Vec<u8>>,
}

/// What the test knows of one family: its id, user, and each generation's
/// token the holder was given.
struct Family {
    id: Uuid,
    user: u8,
    tokens: Vec<Token>,
}

/// A revocation as read from revoked_at and revoke_reason.
fn revocation(row: &tokio_postgres::Row, at: usize, reason: usize) -> Option<Revocation> {
    let revoked_at: Option<SystemTime> = row.get(at);
    let reason: Option<&str> = row.get(reason);
    revoked_at.zip(reason).map(|(t, r)| Reason::parse(r).at(t))
}

/// The token rows in the table, as the model sees them.
async fn rows(client: &Client) -> BTreeMap<(Uuid, i32), TokenRow> {
    client
        .query("SELECT session_id, generation, expires_at, revoked_at, revoke_reason FROM auth.refresh_tokens", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| ((r.get(0), r.get(1)), TokenRow { expires_at: r.get(2), revoked: revocation(r, 3, 4) }))
        .collect()
}

/// The session rows in the table, as the model sees them.
async fn sessions(client: &Client) -> BTreeMap<Uuid, SessionRow> {
    client
        .query(
            "SELECT id, refresh_expires_at, revoked_at, revoke_reason FROM auth.sessions",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| {
            (
                r.get(0),
                SessionRow {
                    refresh_expires_at: r.get(1),
                    revoked: revocation(r, 2, 3),
                },
            )
        })
        .collect()
}

/// Presents `token` for (id, generation) asking for `next`: the outcome and,
/// when rotated, the new token's authenticator.
async fn present(
    client: &Client,
    id: Uuid,
    generation: i32,
    token: &Token,
    next: &[u8],
    now: SystemTime,
) -> (String, Option<Vec<u8>>) {
    let row = client
        .query_one(
            "SELECT outcome, authenticator FROM auth.rotate_token(p_session_id => $1, p_generation => $2,
                 p_token_hash => $3, p_new_token_hash => $4, p_ttl => interval '1 day', p_now => $5,
                 p_authenticator => $6)",
            &[&id, &generation, &token.hash, &next, &now, &token.authenticator],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

/// Runs one history; returns Err with what broke.
async fn run(client: &Client, policy: Policy, steps: &[Step]) -> Result<(), String> {
    client
        .batch_execute("TRUNCATE auth.sessions, auth.refresh_tokens, auth.cleanup_runs")
        .await
        .unwrap();
    policy.apply(client).await;
    client
        .batch_execute("UPDATE auth.cleanup_policy SET reuse_grace = '0'")
        .await
        .unwrap();
    let mut now = at(0);
    let mut families: Vec<Family> = Vec::new();
    let mut rejected: Vec<(Uuid, i32, Token)> = Vec::new();
    let mut nonce = 0u64;
    let mut fresh_hash = || {
        nonce += 1;
        hash(&format!("token-{nonce}"))
    };

    for (i, step) in steps.iter().enumerate() {
        match *step {
            Step::Issue { user, ttl_h } => {
                let h = fresh_hash();
                let row = client
                    .query_one(
                        "SELECT session_id, authenticator FROM auth.issue_token(p_user_id => $1,
                             p_token_hash => $2, p_ttl => make_interval(hours => $3), p_now => $4)",
                        &[&format!("user-{user}"), &h, &i32::from(ttl_h), &now],
                    )
                    .await
                    .unwrap();
                families.push(Family {
                    id: row.get(0),
                    user,
                    tokens: vec![Token {
                        hash: h,
                        authenticator: row.get(1),
                    }],
                });
            }
            Step::Rotate { family } if !families.is_empty() => {
                let index = family as usize % families.len();
                let f = &mut families[index];
                let generation = f.tokens.len() as i32 - 1;
                let next = fresh_hash();
                let held = f.tokens[generation as usize].clone();
                let (outcome, authenticator) =
                    present(client, f.id, generation, &held, &next, now).await;
                if outcome == "rotated" {
                    f.tokens.push(Token {
                        hash: next,
                        authenticator,
                    });
                } else {
                    rejected.push((f.id, generation, held));
                }
            }
            Step::Present {
                family,
                back,
                forward,
                wrong_hash,
                legacy,
            } if !families.is_empty() => {
                let index = family as usize % families.len();
                let f = &families[index];
                let newest = f.tokens.len() as i32 - 1;
                let generation = if forward {
                    newest + i32::from(back)
                } else {
                    (newest - i32::from(back)).max(0)
                };
                let forged = wrong_hash || generation > newest;
                let presented = match f.tokens.get(generation as usize) {
                    Some(token) if !forged => token.clone(),
                    _ => Token {
                        hash: fresh_hash(),
                        authenticator: (!legacy).then(|| fresh_hash()[..16].to_vec()),
                    },
                };
                let next = fresh_hash();
                let (outcome, authenticator) =
                    present(client, f.id, generation, &presented, &next, now).await;
                if forged && outcome == "reuse_detected" {
                    return Err(format!("step {i}: forgery {step:?} revoked the family"));
                }
                if outcome == "rotated" {
                    if generation != newest || forged {
                        return Err(format!("step {i}: {step:?} was accepted"));
                    }
                    families[index].tokens.push(Token {
                        hash: next,
                        authenticator,
                    });
                } else {
                    rejected.push((f.id, generation, presented));
                }
            }
            Step::Revoke { family, whole_user } if !families.is_empty() => {
                let f = &families[family as usize % families.len()];
                if whole_user {
                    client
                        .query_one(
                            "SELECT auth.revoke_user_sessions(p_user_id => $1, p_now => $2)",
                            &[&format!("user-{}", f.user), &now],
                        )
                        .await
                        .unwrap();
                } else {
                    client
                        .query_one(
                            "SELECT auth.revoke_session(p_session_id => $1, p_now => $2)",
                            &[&f.id, &now],
                        )
                        .await
                        .unwrap();
                }
            }
            Step::Purge { limit } => {
                let before_rows = rows(client).await;
                let before_sessions = sessions(client).await;
                purge(client, now, limit.map(i32::from)).await;
                let after_rows = rows(client).await;
                for (key, row) in &before_rows {
                    if after_rows.contains_key(key) {
                        continue;
                    }
                    if row.live(now) {
                        return Err(format!("step {i}: live token {key:?} was deleted"));
                    }
                    if row.due(policy, now).is_none() {
                        return Err(format!(
                            "step {i}: {key:?} {row:?} deleted before its retention"
                        ));
                    }
                }
                if limit.is_none()
                    && let Some((key, _)) = after_rows
                        .iter()
                        .find(|(_, r)| r.due(policy, now).is_some())
                {
                    return Err(format!(
                        "step {i}: due row {key:?} survived an unlimited purge"
                    ));
                }
                let after_sessions = sessions(client).await;
                for (id, session) in &before_sessions {
                    if after_sessions.contains_key(id) {
                        continue;
                    }
                    if before_rows.iter().any(|((s, _), r)| s == id && r.live(now)) {
                        return Err(format!("step {i}: the session of a live token was deleted"));
                    }
                    let has_tokens = after_rows.keys().any(|(s, _)| s == id);
                    if !session.due(policy, now, has_tokens) {
                        return Err(format!(
                            "step {i}: session {session:?} deleted before it was due"
                        ));
                    }
                }
                if limit.is_none()
                    && let Some((id, _)) = after_sessions.iter().find(|(id, s)| {
                        s.due(policy, now, after_rows.keys().any(|(t, _)| t == *id))
                    })
                {
                    return Err(format!(
                        "step {i}: due session {id:?} survived an unlimited purge"
                    ));
                }
                // Breach detection survives: every rotated-away generation of a
                // family that still exists reads reuse_detected (rolled back).
                for f in &families {
                    if !after_sessions.contains_key(&f.id) {
                        continue;
                    }
                    for (generation, token) in f.tokens.iter().enumerate().rev().skip(1) {
                        client.batch_execute("BEGIN").await.unwrap();
                        let (outcome, _) =
                            present(client, f.id, generation as i32, token, &fresh_hash(), now)
                                .await;
                        client.batch_execute("ROLLBACK").await.unwrap();
                        if outcome != "reuse_detected" {
                            return Err(format!(
                                "step {i}: replay of rotated generation {generation} read {outcome}"
                            ));
                        }
                    }
                }
            }
            Step::Advance { minutes } => {
                now += std::time::Duration::from_secs(u64::from(minutes) * 60)
            }
            _ => {}
        }
        // Nothing rejected is ever accepted later (checked without side effects).
        for (id, generation, presented) in &rejected {
            client.batch_execute("BEGIN").await.unwrap();
            let (outcome, _) =
                present(client, *id, *generation, presented, &fresh_hash(), now).await;
            client.batch_execute("ROLLBACK").await.unwrap();
            if outcome == "rotated" {
                return Err(format!(
                    "step {i}: a rejected token (generation {generation}) was accepted"
                ));
            }
        }
    }
    Ok(())
}

/// In both modes of `token_history`: a row per issued token, or the
/// session's token replaced in place.
#[rstest::rstest]
fn random_histories_keep_the_invariants(#[values(false, true)] history: bool) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let db = runtime.block_on(TestDb::migrated());
    runtime.block_on(set_token_history(&db.client, history));
    let cases: u32 = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(96);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let result = runner.run(
        &(policy(), proptest::collection::vec(step(), 1..60)),
        |(policy, steps)| {
            runtime
                .block_on(run(&db.client, policy, &steps))
                .map_err(|broken| {
                    TestCaseError::fail(format!(
                        "{broken}\ntoken_history {history}, policy {policy:?}\nsteps {steps:#?}"
                    ))
                })
        },
    );
    if let Err(err) = result {
        panic!("{err}");
    }
}
