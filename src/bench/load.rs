//! Open-loop rotation traffic: calls to auth.rotate_token at a fixed rate,
//! each timed from its scheduled start, so a stalled server or client cannot
//! hide its own queueing (no coordinated omission).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use tokio::sync::{Mutex, watch};
use uuid::Uuid;

use super::seed::{authenticator, token_hash};

/// Live tokens to rotate, one per slot (a device), used round-robin.
pub struct Targets {
    tokens: Vec<Mutex<Held>>,
    next: AtomicUsize,
}

/// A live token a slot presents at its next rotation: its selector, its
/// stored hash and the authenticator it carries (so that rotations are made
/// as TokenStore makes them: in place under the default policy).
pub struct Held {
    pub session: Uuid,
    pub generation: i64,
    pub hash: Vec<u8>,
    pub authenticator: Vec<u8>,
}

impl Targets {
    /// Targets from (session, generation) pairs of seeded live tokens, whose
    /// hashes and authenticators are the seed's ([`token_hash`],
    /// [`authenticator`]).
    pub fn new(tokens: Vec<(Uuid, i64)>) -> Self {
        Self::issued(
            tokens
                .into_iter()
                .map(|(session, generation)| {
                    let hash = token_hash(session, generation);
                    Held {
                        session,
                        generation,
                        authenticator: authenticator(session, generation, &hash),
                        hash,
                    }
                })
                .collect(),
        )
    }

    /// Targets from live tokens, such as tokens just issued with hashes of
    /// the caller's choosing.
    pub fn issued(tokens: Vec<Held>) -> Self {
        Self {
            tokens: tokens.into_iter().map(Mutex::new).collect(),
            next: AtomicUsize::new(0),
        }
    }

    /// How many slots there are.
    pub fn slots(&self) -> usize {
        self.tokens.len()
    }

    /// Puts `token` in `slot` (once a rotation of the slot in flight is
    /// done); returns the session the slot held, which no rotation presents
    /// any more.
    pub async fn replace(&self, slot: usize, token: Held) -> Uuid {
        let mut held = self.tokens[slot].lock().await;
        std::mem::replace(&mut *held, token).session
    }
}

/// One rotation: when it was scheduled and how long after that it finished.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// Scheduled start.
    pub scheduled: Instant,
    /// Milliseconds from the scheduled start to completion.
    pub latency_ms: f64,
    /// False when it errored or did not return 'rotated'.
    pub ok: bool,
}

async fn rotate_once(pool: &Pool, targets: &Targets) -> bool {
    let slot = targets.next.fetch_add(1, Ordering::Relaxed) % targets.tokens.len();
    let mut held = targets.tokens[slot].lock().await;
    let (session, generation) = (held.session, held.generation);
    let next_hash = token_hash(session, generation + 1);
    let Ok(client) = pool.get().await else {
        return false;
    };
    let Ok(statement) = client
        .prepare_cached(
            "SELECT outcome, authenticator FROM auth.rotate_token(p_session_id => $1, p_generation => $2,
                 p_token_hash => $3, p_new_token_hash => $4, p_ttl => interval '30 days',
                 p_successor_seal => $5, p_authenticator => $6)",
        )
        .await
    else {
        return false;
    };
    let result = client
        .query_one(
            &statement,
            &[
                &session,
                &(generation as i32),
                &held.hash,
                &next_hash,
                // Any 32 bytes: a seal costs the database the same work.
                &token_hash(session, generation + 2),
                &held.authenticator,
            ],
        )
        .await;
    match result {
        Ok(row) if row.get::<_, &str>(0) == "rotated" => {
            held.generation += 1;
            held.hash = next_hash;
            held.authenticator = row.get(1);
            true
        }
        _ => false,
    }
}

/// Calls auth.rotate_token `rate` times a second until `stop` turns true,
/// then waits for the calls in flight and returns every sample.
pub async fn run(
    pool: Pool,
    targets: Arc<Targets>,
    rate: f64,
    mut stop: watch::Receiver<bool>,
) -> Vec<Sample> {
    let period = Duration::from_secs_f64(1.0 / rate);
    let start = Instant::now();
    let mut calls = Vec::new();
    for i in 0u32.. {
        let scheduled = start + period * i;
        tokio::select! {
            _ = tokio::time::sleep_until(scheduled.into()) => {}
            _ = stop.changed() => break,
        }
        if *stop.borrow() {
            break;
        }
        let (pool, targets) = (pool.clone(), targets.clone());
        calls.push(tokio::spawn(async move {
            let ok = rotate_once(&pool, &targets).await;
            Sample {
                scheduled,
                latency_ms: scheduled.elapsed().as_secs_f64() * 1000.0,
                ok,
            }
        }));
    }
    let mut samples = Vec::with_capacity(calls.len());
    for call in calls {
        if let Ok(sample) = call.await {
            samples.push(sample);
        }
    }
    samples
}

/// The `q` quantile (0..1) of the latencies of samples scheduled in
/// [from, to], in milliseconds; 0 without samples.
pub fn quantile(samples: &[Sample], from: Instant, to: Instant, q: f64) -> f64 {
    let mut window: Vec<f64> = samples
        .iter()
        .filter(|s| s.scheduled >= from && s.scheduled <= to)
        .map(|s| s.latency_ms)
        .collect();
    if window.is_empty() {
        return 0.0;
    }
    window.sort_by(f64::total_cmp);
    let rank = ((q * window.len() as f64).ceil() as usize).clamp(1, window.len());
    window[rank - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_use_the_nearest_rank_in_the_window() {
        let t0 = Instant::now();
        let samples: Vec<Sample> = (1..=100)
            .map(|i| Sample {
                scheduled: t0 + Duration::from_millis(i),
                latency_ms: i as f64,
                ok: true,
            })
            .collect();
        let end = t0 + Duration::from_secs(1);
        assert_eq!(quantile(&samples, t0, end, 0.5), 50.0);
        assert_eq!(quantile(&samples, t0, end, 0.99), 99.0);
        assert_eq!(
            quantile(&samples, t0 + Duration::from_millis(91), end, 0.5),
            95.0
        );
        assert_eq!(quantile(&[], t0, end, 0.99), 0.0);
    }
}
