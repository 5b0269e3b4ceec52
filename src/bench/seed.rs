//! Seeding a realistic token table with COPY: families of ten tokens, the
//! older generations rotated, the newest live, laid out in the heap in time
//! order (as a table fills in production) or a session's rows together (as
//! after a restore or a CLUSTER), with distinct revoke times or a mass
//! revocation's shared ones.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::SinkExt;
use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};
use tokio_postgres::Client;
use uuid::Uuid;

use anyhow::Result;

use super::fail;
use crate::error::db;

/// Tokens per family.
pub const GENERATIONS: i64 = 10;
const DAY: Duration = Duration::from_secs(86_400);
const TTL: Duration = Duration::from_secs(30 * 86_400);

/// What to seed.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// Token rows in families of [`GENERATIONS`].
    pub family_rows: i64,
    /// Of those, how many rotated rows are due (revoked over two hours ago);
    /// the other rotated rows were revoked in the last 50 minutes.
    pub due: i64,
    /// Extra live rows: families of one token.
    pub idle_rows: i64,
    /// Where the extra live rows sit in time (and so in the heap).
    pub idle_layout: IdleRows,
    /// The heap order of the families' rows.
    pub order: Order,
    /// Every due row of a generation revoked at one instant (a mass
    /// revocation), instead of each at its own time.
    pub ties: bool,
}

/// The heap order of the families' rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// In the order they were issued, as a table fills.
    Time,
    /// By primary key: a session's rows together, sessions in the order
    /// they logged in.
    Session,
}

/// Where extra live rows sit relative to the due rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IdleRows {
    /// Issued in the last 50 minutes, after every due row: sessions that
    /// refresh often, the common case.
    Recent,
    /// Issued over the same week as the due rows, between them: sessions
    /// idle for days, the worst case for a purge, which then touches pages
    /// in proportion to the table.
    Interleaved,
}

/// The stand-in token hash of (session, generation) that the seed stores
/// and the rotation load presents.
pub fn token_hash(session: Uuid, generation: i64) -> Vec<u8> {
    Sha256::digest(format!("{session}/{generation}")).to_vec()
}

/// `t` as an ISO 8601 UTC timestamp for COPY (days to civil date after
/// Howard Hinnant's public-domain algorithm).
fn timestamp(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let (secs, micros) = (since.as_secs() as i64, since.subsec_micros());
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}.{micros:06}+00",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

struct Token {
    session: usize,
    generation: i64,
    issued: SystemTime,
    revoked: Option<SystemTime>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A seeded session's MAC key (128 bytes, as `auth.issue_token` stores one:
/// the inner and the outer padded block), so that the bench's rotations do
/// what rotations of sessions issued by this release do; derived from the
/// id, since nothing seeded is secret.
fn mac_key_blocks(session: Uuid) -> Vec<u8> {
    (0..4)
        .flat_map(|k| Sha256::digest(format!("{session}/mac/{k}")).to_vec())
        .collect()
}

fn mac_key(session: Uuid) -> String {
    hex(&mac_key_blocks(session))
}

/// The authenticator an `rt2_` token of a seeded session carries for
/// `generation` and `hash`, as `auth._authenticator` computes it from the
/// key's blocks: SHA-256(outer ‖ SHA-256(inner ‖ session ‖ generation ‖
/// hash)), its first 16 bytes. Rotations that present it are made in place
/// under the default policy, as TokenStore's are.
pub fn authenticator(session: Uuid, generation: i64, hash: &[u8]) -> Vec<u8> {
    let blocks = mac_key_blocks(session);
    let mut inner = Sha256::new();
    inner.update(&blocks[..64]);
    inner.update(session.as_bytes());
    inner.update((generation as i32).to_be_bytes());
    inner.update(hash);
    let mut outer = Sha256::new();
    outer.update(&blocks[64..]);
    outer.update(inner.finalize());
    outer.finalize()[..16].to_vec()
}

/// Seeds `shape` into a migrated, empty database and ANALYZEs it. Returns
/// the due row count.
///
/// # Errors
/// The statement's error, naming the step.
pub async fn seed(client: &Client, shape: Shape, seed: u64) -> Result<i64> {
    let now = SystemTime::now();
    let families = (shape.family_rows / GENERATIONS) as usize;
    let rotated = families as i64 * (GENERATIONS - 1);
    let due = shape.due.min(rotated);
    let due_step = (7 * DAY).as_secs_f64() / due.max(1) as f64;
    let recent_step = Duration::from_secs(45 * 60).as_secs_f64() / (rotated - due).max(1) as f64;
    // Revoke time of the i-th rotated row in time order: due ones spread over a
    // week ending two hours ago, the rest over the last 50 minutes.
    let revoke_at = |i: i64| -> SystemTime {
        if i < due && shape.ties {
            // One instant per generation: (GENERATIONS - generation) hours
            // before the two-hour mark.
            let generation = i / families.max(1) as i64;
            now - Duration::from_secs(7200 + 3600 * (GENERATIONS - generation) as u64)
        } else if i < due {
            now - Duration::from_secs(7200) - Duration::from_secs_f64((due - i) as f64 * due_step)
        } else {
            now - Duration::from_secs(3000)
                + Duration::from_secs_f64((i - due) as f64 * recent_step)
        }
    };

    let idle = shape.idle_rows as usize;
    let sessions: Vec<Uuid> = (0..families + idle)
        .map(|i| Uuid::from_u64_pair(seed, i as u64))
        .collect();
    let mut tokens = Vec::with_capacity(families * GENERATIONS as usize + idle);
    for g in 0..GENERATIONS {
        for s in 0..families {
            let i = g * families as i64 + s as i64;
            let issued = if g == 0 {
                revoke_at(i) - Duration::from_secs(900)
            } else {
                revoke_at(i - families as i64)
            };
            let revoked = (g < GENERATIONS - 1).then(|| revoke_at(i));
            tokens.push(Token {
                session: s,
                generation: g,
                issued,
                revoked,
            });
        }
    }
    let (idle_from, idle_span) = match shape.idle_layout {
        IdleRows::Recent => (
            now - Duration::from_secs(3000),
            Duration::from_secs(45 * 60),
        ),
        IdleRows::Interleaved => (now - 7 * DAY - Duration::from_secs(7200), 7 * DAY),
    };
    let idle_step = idle_span.as_secs_f64() / idle.max(1) as f64;
    for k in 0..idle {
        let issued = idle_from + Duration::from_secs_f64(k as f64 * idle_step);
        tokens.push(Token {
            session: families + k,
            generation: 0,
            issued,
            revoked: None,
        });
    }
    match shape.order {
        Order::Time => tokens.sort_by_key(|t| t.issued),
        Order::Session => tokens.sort_by_key(|t| (t.session, t.generation)),
    }

    let mut first_issued = vec![now; sessions.len()];
    let mut last_issued = vec![UNIX_EPOCH; sessions.len()];
    let mut newest = vec![0i64; sessions.len()];
    for t in &tokens {
        first_issued[t.session] = first_issued[t.session].min(t.issued);
        if t.issued >= last_issued[t.session] {
            last_issued[t.session] = t.issued;
            newest[t.session] = t.generation;
        }
    }

    let bar = ProgressBar::new((sessions.len() + tokens.len()) as u64).with_style(
        ProgressStyle::with_template("seeding {bar:40} {pos}/{len} rows ({per_sec}, {eta} left)")
            .expect("a valid progress template"),
    );
    let sink = client
        .copy_in(
            "COPY auth.sessions (id, user_id, created_at, generation, refresh_expires_at, expiry_floor, mac_key) \
             FROM STDIN",
        )
        .await
        .map_err(db("seeding sessions"))?;
    let mut sink = Box::pin(sink);
    let mut buffer = String::new();
    for (s, id) in sessions.iter().enumerate() {
        // The expiry floor at the expiry, as issue and rotate write it.
        let expires = timestamp(last_issued[s] + TTL);
        buffer.push_str(&format!(
            "{id}\tuser-{s}\t{}\t{}\t{expires}\t{expires}\t\\\\x{}\n",
            timestamp(first_issued[s]),
            newest[s],
            mac_key(*id)
        ));
        if buffer.len() > 1 << 20 {
            sink.send(Bytes::from(std::mem::take(&mut buffer)))
                .await
                .map_err(db("seeding sessions"))?;
            bar.set_position(s as u64);
        }
    }
    sink.send(Bytes::from(std::mem::take(&mut buffer)))
        .await
        .map_err(db("seeding sessions"))?;
    sink.as_mut()
        .finish()
        .await
        .map_err(db("seeding sessions"))?;
    bar.set_position(sessions.len() as u64);

    let sink = client
        .copy_in(
            "COPY auth.refresh_tokens (session_id, generation, token_hash, issued_at, expires_at, revoked_at, revoke_reason,
                                   rotates_in_place) FROM STDIN",
        )
        .await
        .map_err(db("seeding tokens"))?;
    let mut sink = Box::pin(sink);
    for (n, t) in tokens.iter().enumerate() {
        let id = sessions[t.session];
        // A live token as this release's issue and rotate write it under
        // the default policy: its rotation is made in place.
        let (revoked, reason, in_place) = match t.revoked {
            Some(at) => (timestamp(at), "rotated", "f"),
            None => ("\\N".to_string(), "\\N", "t"),
        };
        buffer.push_str(&format!(
            "{id}\t{}\t\\\\x{}\t{}\t{}\t{revoked}\t{reason}\t{in_place}\n",
            t.generation,
            hex(&token_hash(id, t.generation)),
            timestamp(t.issued),
            timestamp(t.issued + TTL),
        ));
        if buffer.len() > 1 << 20 {
            sink.send(Bytes::from(std::mem::take(&mut buffer)))
                .await
                .map_err(db("seeding tokens"))?;
            bar.set_position((sessions.len() + n) as u64);
        }
    }
    sink.send(Bytes::from(buffer))
        .await
        .map_err(db("seeding tokens"))?;
    sink.as_mut().finish().await.map_err(db("seeding tokens"))?;
    bar.finish_and_clear();

    client
        .batch_execute("VACUUM ANALYZE auth.sessions, auth.refresh_tokens")
        .await
        .map_err(db("vacuuming the seeded tables"))?;
    let due_rows = format!(
        "SELECT count(*) FROM auth.refresh_tokens WHERE {}",
        super::strategy::due_predicate(client).await?
    );
    let counted: i64 = client
        .query_one(&due_rows, &[])
        .await
        .map_err(db("counting due rows"))?
        .get(0);
    if counted != due {
        return Err(fail(format!(
            "checking the seed: expected {due} due rows, found {counted}"
        )));
    }
    Ok(due)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_iso_utc() {
        assert_eq!(timestamp(UNIX_EPOCH), "1970-01-01 00:00:00.000000+00");
        let t = UNIX_EPOCH + Duration::from_micros(1_767_225_600_000_001);
        assert_eq!(timestamp(t), "2026-01-01 00:00:00.000001+00");
        let leap = UNIX_EPOCH + Duration::from_secs(951_827_696);
        assert_eq!(timestamp(leap), "2000-02-29 12:34:56.000000+00");
    }
}
