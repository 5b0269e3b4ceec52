//! `make demo`: 2,000 users over three simulated days ending now (the clock
//! is driven through `p_now`): each logs in once a day at their own hour,
//! refreshes every 15 minutes for a few hours, then logs out or just leaves.
//! One user's first token is stolen. Then the cleanup runs, and the thief
//! replays the stolen token after its row is gone.

use std::time::{Duration, SystemTime};

use anyhow::Context;
use futures_util::{StreamExt, stream};
use indicatif::{ProgressBar, ProgressStyle};
use token_janitor::store::rotate_with;
use token_janitor::testing::simulated::{issue_at, revoke_session_at, rotate_at};
use token_janitor::{DatabaseUrl, Issued, RevokeReason, Rotation};
use tokio_postgres::Client;

const USERS: u64 = 2_000;
const DAYS: u32 = 3;
const STEP: Duration = Duration::from_secs(15 * 60);
const TTL: Duration = Duration::from_secs(12 * 3600);
const PREFIX: &str = "demo-user-";

/// A user's habits, fixed by their number.
struct Habit {
    login_step: u32,
    steps_active: u32,
    logs_out: bool,
}

fn habit(user: u64) -> Habit {
    let h = user.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17);
    Habit {
        login_step: (h % 96) as u32,
        steps_active: 8 + ((h >> 8) % 17) as u32,
        logs_out: (h >> 16) % 10 < 3,
    }
}

enum Event {
    Login(u64),
    Refresh(u64),
    Leave(u64),
}

/// Token rows by state as of `now`, sessions, and the table's size.
async fn table_line(client: &Client, now: SystemTime) -> anyhow::Result<String> {
    let row = client
        .query_one(
            "SELECT count(*) FILTER (WHERE revoked_at IS NULL AND expires_at >= $1),
                    count(*) FILTER (WHERE revoke_reason = 'rotated'),
                    count(*) FILTER (WHERE revoked_at IS NOT NULL AND revoke_reason <> 'rotated'),
                    count(*) FILTER (WHERE revoked_at IS NULL AND expires_at < $1),
                    (SELECT count(*) FROM auth.sessions),
                    pg_size_pretty(pg_total_relation_size('auth.refresh_tokens'))
             FROM auth.refresh_tokens",
            &[&now],
        )
        .await?;
    Ok(format!(
        "{:>7} live  {:>7} rotated  {:>6} revoked  {:>6} expired  {:>6} sessions  {:>8} on disk",
        row.get::<_, i64>(0),
        row.get::<_, i64>(1),
        row.get::<_, i64>(2),
        row.get::<_, i64>(3),
        row.get::<_, i64>(4),
        row.get::<_, String>(5)
    ))
}

/// Sets the cleanup job's `active` flag when pg_cron and the job exist;
/// returns whether it changed (so a paused job is resumed, and one that was
/// inactive before stays so).
async fn set_job_active(client: &Client, active: bool) -> anyhow::Result<bool> {
    if client
        .query_one("SELECT to_regclass('cron.job') IS NULL", &[])
        .await?
        .get(0)
    {
        return Ok(false);
    }
    let changed = client
        .query(
            "SELECT cron.alter_job(job_id => jobid, active => $1) FROM cron.job
             WHERE command = 'CALL auth.run_token_cleanup()' AND active <> $1",
            &[&active],
        )
        .await?;
    Ok(!changed.is_empty())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = DatabaseUrl::parse(
        &std::env::var("DATABASE_URL").context("set DATABASE_URL (make demo does)")?,
    )?;
    let pool = url.pool(8);
    let client = url.connect().await?;
    client
        .execute(
            "DELETE FROM auth.sessions WHERE user_id LIKE $1",
            &[&format!("{PREFIX}%")],
        )
        .await?;

    let steps = DAYS * 96;
    let start = SystemTime::now() - STEP * steps;
    let mut current: Vec<Option<Issued>> = vec![None; USERS as usize];
    let mut stolen = None;
    let mut rotations = 0u64;
    println!("Simulating {USERS} users over {DAYS} days (15-minute refreshes, 12-hour tokens):");
    let bar = ProgressBar::new(u64::from(steps)).with_style(
        ProgressStyle::with_template("  {bar:40} {msg}").expect("a valid progress template"),
    );
    // pg_cron's job runs at the real clock while the simulation drives one
    // three days back: it would purge what the simulation still uses, and
    // fight it for the same rows. It pauses for the simulation.
    let paused = set_job_active(&client, false).await?;
    let simulated: anyhow::Result<()> = async {
        for step in 0..steps {
            let now = start + STEP * step;
            let events: Vec<Event> = (0..USERS)
                .filter_map(|u| {
                    let h = habit(u);
                    let since_login = (step + 96 - h.login_step) % 96;
                    match (since_login, &current[u as usize]) {
                        (0, _) => Some(Event::Login(u)),
                        (s, Some(_)) if s == h.steps_active => Some(Event::Leave(u)),
                        (s, Some(_)) if s < h.steps_active => Some(Event::Refresh(u)),
                        _ => None,
                    }
                })
                .collect();
            let results: Vec<anyhow::Result<(u64, Option<Issued>)>> = stream::iter(events)
                .map(|event| {
                    let pool = pool.clone();
                    let token = match &event {
                        Event::Refresh(u) | Event::Leave(u) => current[*u as usize].clone(),
                        Event::Login(_) => None,
                    };
                    async move {
                        let client = pool.get().await?;
                        Ok(match event {
                            Event::Login(u) => (
                                u,
                                Some(issue_at(&**client, &format!("{PREFIX}{u}"), TTL, now).await?),
                            ),
                            Event::Refresh(u) => {
                                let token = token.expect("refreshing users hold a token");
                                match rotate_at(&**client, token.token.expose(), TTL, now).await? {
                                    Rotation::Rotated(next) => (u, Some(next)),
                                    _ => (u, None),
                                }
                            }
                            Event::Leave(u) => {
                                let token = token.expect("leaving users hold a token");
                                if habit(u).logs_out {
                                    revoke_session_at(
                                        &**client,
                                        token.session_id,
                                        RevokeReason::Logout,
                                        now,
                                    )
                                    .await?;
                                }
                                (u, None)
                            }
                        })
                    }
                })
                .buffer_unordered(8)
                .collect()
                .await;
            for result in results {
                let (user, token) = result?;
                if let Some(token) = &token {
                    rotations += u64::from(token.generation > 0);
                    // The thief copies a first token issued 2 to 4 hours before
                    // the end, of a user who will not log out: the token is
                    // rotated (and due) long before the cleanup, its family alive.
                    if stolen.is_none()
                        && token.generation == 0
                        && step + 16 >= steps
                        && !habit(user).logs_out
                    {
                        stolen = Some((user, token.clone()));
                    }
                }
                current[user as usize] = token;
            }
            bar.set_message(format!(
                "day {} {:02}:{:02}",
                step / 96 + 1,
                step % 96 / 4,
                step % 4 * 15
            ));
            bar.inc(1);
            if step % 24 == 23 {
                let hours = (step + 1) / 4;
                let line = format!(
                    "  day {} {:02}:00  {}",
                    hours / 24 + 1,
                    hours % 24,
                    table_line(&client, now + STEP).await?
                );
                bar.suspend(|| println!("{line}"));
            }
        }
        bar.finish_and_clear();
        Ok(())
    }
    .await;
    if paused {
        set_job_active(&client, true).await?;
    }
    simulated?;
    let (victim, stolen) = stolen.context("the simulation issues tokens")?;
    println!(
        "{rotations} rotations. Three hours ago a thief copied the first token of \
         {PREFIX}{victim}'s session, which has been refreshed since."
    );

    println!(
        "\nBefore the cleanup: {}",
        table_line(&client, SystemTime::now()).await?
    );
    client
        .batch_execute("CALL auth.run_token_cleanup()")
        .await?;
    let run = client
        .query_one(
            "SELECT r.status,
                    (SELECT string_agg(t.kind || ' ' || coalesce(r.deleted_by_kind ->> t.kind, '0'), ', '
                                       ORDER BY t.n)
                     FROM auth.purge_targets() WITH ORDINALITY t (kind, shape, relation, key_column, row_key,
                                                                  due, retentions, indexes, empties_sessions,
                                                                  run_column, n)),
                    r.batches, round(extract(epoch FROM r.finished_at - r.started_at)::numeric, 2)::text
             FROM auth.cleanup_runs r ORDER BY r.id DESC LIMIT 1",
            &[],
        )
        .await?;
    println!(
        "CALL auth.run_token_cleanup(): {} in {} s, {} batch(es); deleted by kind: {}",
        run.get::<_, &str>(0),
        run.get::<_, String>(3),
        run.get::<_, i32>(2),
        run.get::<_, String>(1)
    );
    println!(
        "After the cleanup:  {}",
        table_line(&client, SystemTime::now()).await?
    );

    let row_left: i64 = client
        .query_one(
            "SELECT count(*) FROM auth.refresh_tokens WHERE session_id = $1 AND generation = $2",
            &[&stolen.session_id, &stolen.generation],
        )
        .await?
        .get(0);
    let replay = rotate_with(&client, stolen.token.expose(), TTL).await?;
    let session: Option<String> = client
        .query_opt(
            "SELECT revoke_reason FROM auth.sessions WHERE id = $1",
            &[&stolen.session_id],
        )
        .await?
        .and_then(|r| r.get(0));
    println!(
        "\nThe thief replays the stolen token ({}): {replay:?}; the family is now revoked ({}).",
        if row_left == 0 {
            "no row of it is left: rotation replaced it, or the purge deleted it; its authenticator proves it genuine"
        } else {
            "its row is still there"
        },
        session.as_deref().unwrap_or("session gone")
    );

    client
        .execute(
            "DELETE FROM auth.sessions WHERE user_id LIKE $1",
            &[&format!("{PREFIX}%")],
        )
        .await?;
    println!("Demo data removed. Next: token-janitor verify.\n");
    Ok(())
}
