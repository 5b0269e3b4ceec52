//! `make demo`: a few hundred users log in, refresh every 15 minutes over two
//! simulated days (the clock is driven through `p_now`, ending now), some log
//! out, one stolen token is replayed; then the cleanup runs and the tables are
//! shown before and after.

use std::time::{Duration, SystemTime};

use anyhow::Context;
use token_janitor::store::{issue_with, revoke_session_with, rotate_with};
use token_janitor::{DatabaseUrl, RevokeReason, Rotation};

const USERS: usize = 300;
const STEP: Duration = Duration::from_secs(15 * 60);
const STEPS: u32 = 2 * 24 * 4;
const TTL: Duration = Duration::from_secs(24 * 3600);

async fn show(client: &tokio_postgres::Client, title: &str) -> anyhow::Result<()> {
    println!("\n{title}");
    let rows = client
        .query(
            "SELECT CASE WHEN revoked_at IS NULL AND expires_at >= now() THEN 'live'
                         WHEN revoked_at IS NULL THEN 'expired'
                         ELSE 'revoked: ' || revoke_reason END AS state,
                    count(*)
             FROM auth.refresh_tokens GROUP BY 1 ORDER BY 1",
            &[],
        )
        .await?;
    for row in &rows {
        println!(
            "  {:<26} {:>7}",
            row.get::<_, String>(0),
            row.get::<_, i64>(1)
        );
    }
    let sizes = client
        .query_one(
            "SELECT (SELECT count(*) FROM auth.sessions),
                    pg_size_pretty(pg_total_relation_size('auth.refresh_tokens'))",
            &[],
        )
        .await?;
    println!(
        "  sessions: {}, auth.refresh_tokens with indexes: {}",
        sizes.get::<_, i64>(0),
        sizes.get::<_, String>(1)
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("DATABASE_URL").context("set DATABASE_URL (make demo does)")?;
    let client = DatabaseUrl::parse(&url)?.connect().await?;
    let start = SystemTime::now() - STEP * STEPS;

    let mut tokens = Vec::with_capacity(USERS);
    for user in 0..USERS {
        tokens.push(Some(
            issue_with(&client, &format!("user-{user}"), TTL, Some(start)).await?,
        ));
    }
    let stolen = tokens[0].as_ref().map(|t| t.token.clone()).expect("issued");
    let mut rotations = 0;
    for step in 1..=STEPS {
        let now = start + STEP * step;
        for (user, slot) in tokens.iter_mut().enumerate() {
            let Some(current) = slot else { continue };
            if user % 10 == step as usize % 10 && step % 24 == 0 {
                revoke_session_with(&client, current.session_id, RevokeReason::Logout, Some(now))
                    .await?;
                *slot = None;
                continue;
            }
            if let Rotation::Rotated(next) =
                rotate_with(&client, current.token.expose(), TTL, Some(now)).await?
            {
                *slot = Some(next);
                rotations += 1;
            }
        }
    }
    println!("{USERS} users, {rotations} rotations over two simulated days");
    show(&client, "before cleanup:").await?;

    client
        .batch_execute("CALL auth.run_token_cleanup()")
        .await?;
    let run = client
        .query_one(
            "SELECT status, expired_deleted, revoked_deleted, rotated_deleted, sessions_deleted, batches
             FROM auth.cleanup_runs ORDER BY id DESC LIMIT 1",
            &[],
        )
        .await?;
    println!(
        "\nCALL auth.run_token_cleanup(): {}, deleted {} expired, {} revoked, {} rotated tokens and {} sessions in {} batch(es)",
        run.get::<_, &str>(0),
        run.get::<_, i64>(1),
        run.get::<_, i64>(2),
        run.get::<_, i64>(3),
        run.get::<_, i64>(4),
        run.get::<_, i32>(5)
    );
    show(&client, "after cleanup:").await?;

    let replay = rotate_with(&client, stolen.expose(), TTL, None).await?;
    println!(
        "\nreplaying user-0's first token, whose row the cleanup deleted: {replay:?} \
         (the session's generation counter still catches it)"
    );
    Ok(())
}
