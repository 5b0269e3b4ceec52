//! Rotations per second at saturation through the library, both ways it
//! sends a call, alternating in one run:
//! - `pooled`: `TokenStore::rotate` on a pool, whose connections keep each
//!   call's statement prepared (one round trip a call, parsed once and,
//!   after its first five calls, planned once);
//! - `per call`: `store::rotate_with` on a connection of the task's own,
//!   which sends each call as an unnamed statement (one round trip, parsed
//!   and planned every time).
//!
//! ```sh
//! DATABASE_URL=postgres://…/migrated_db cargo run --release --example store_rate -- [tasks] [seconds] [rounds]
//! ```
//!
//! Each of `tasks` (default 2) logs a user in and rotates its token, one
//! call after the other, for `seconds` (default 15); `rounds` (default 3)
//! alternates the two ways. The role needs `token_janitor_app`. It writes
//! sessions `store-rate-<n>` and revokes them at the end.

use std::time::{Duration, Instant};

use token_janitor::store::rotate_with;
use token_janitor::{DatabaseUrl, Issued, RevokeReason, Rotation, TokenStore};

const TTL: Duration = Duration::from_secs(3600);

fn next(rotation: Rotation) -> Result<Issued, String> {
    match rotation {
        Rotation::Rotated(issued) => Ok(issued),
        other => Err(format!("a rotation read {other:?}")),
    }
}

/// Rotations a second over `tasks` tasks, each rotating its own session
/// for `length`, pooled or per call.
async fn rate(
    url: &DatabaseUrl,
    store: &TokenStore,
    tokens: &mut [Issued],
    length: Duration,
    pooled: bool,
) -> Result<f64, Box<dyn std::error::Error>> {
    let mut tasks = Vec::new();
    for token in tokens.iter() {
        let (url, store, mut token) = (url.clone(), store.clone(), token.clone());
        tasks.push(tokio::spawn(async move {
            let client = if pooled {
                None
            } else {
                Some(url.connect().await.map_err(|e| e.to_string())?)
            };
            let (start, mut calls) = (Instant::now(), 0u64);
            while start.elapsed() < length {
                let rotation = match &client {
                    None => store.rotate(token.token.expose()).await,
                    Some(client) => rotate_with(client, token.token.expose(), TTL).await,
                };
                token = next(rotation.map_err(|e| e.to_string())?)?;
                calls += 1;
            }
            Ok::<_, String>((token, calls, start.elapsed()))
        }));
    }
    let mut per_second = 0.0;
    for (slot, task) in tasks.into_iter().enumerate() {
        let (token, calls, took) = task.await??;
        tokens[slot] = token;
        per_second += calls as f64 / took.as_secs_f64();
    }
    Ok(per_second)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[(values.len() - 1) / 2]
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = DatabaseUrl::parse(
        &std::env::var("DATABASE_URL").map_err(|_| "set DATABASE_URL to a migrated database")?,
    )?;
    let arg = |n: usize, default: u64| -> Result<u64, String> {
        std::env::args().nth(n).map_or(Ok(default), |v| {
            v.parse().ok().filter(|&v| v > 0).ok_or(format!(
                "argument {n} must be a positive whole number, got '{v}'"
            ))
        })
    };
    let (tasks, seconds, rounds) = (arg(1, 2)?, arg(2, 15)?, arg(3, 3)?);
    let store = TokenStore::new(url.pool(tasks as usize)).with_ttl(TTL);
    let mut tokens = Vec::new();
    for n in 0..tasks {
        tokens.push(store.issue(&format!("store-rate-{n}")).await?);
    }
    let length = Duration::from_secs(seconds);
    let (mut pooled, mut per_call) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        for way in [true, false] {
            let per_second = rate(&url, &store, &mut tokens, length, way).await?;
            let name = if way { "pooled" } else { "per call" };
            eprintln!("round {round}, {name}: {per_second:.0} rotations/s");
            if way { &mut pooled } else { &mut per_call }.push(per_second);
        }
    }
    let (pooled, per_call) = (median(pooled), median(per_call));
    println!(
        "{tasks} tasks, {seconds} s, medians of {rounds}: pooled {pooled:.0}/s, per call {per_call:.0}/s, {:.2}x",
        pooled / per_call
    );
    for token in &tokens {
        store
            .revoke_session(token.session_id, RevokeReason::Logout)
            .await?;
    }
    Ok(())
}
