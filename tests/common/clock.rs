//! The fixed clock tests drive the SQL API with (`p_now`), and the server's
//! own.

use std::time::{Duration, SystemTime};

use tokio_postgres::Client;

/// 2026-01-01T00:00:00Z, the fixed clock tests start from.
pub const T0_UNIX: u64 = 1_767_225_600;

/// T0 plus `seconds` (negative: before T0).
pub fn at(seconds: i64) -> SystemTime {
    plus(
        std::time::UNIX_EPOCH + Duration::from_secs(T0_UNIX),
        seconds,
    )
}

pub const MINUTE: i64 = 60;
pub const HOUR: i64 = 3600;
pub const DAY: i64 = 86_400;

/// `t` plus `seconds` (negative: before `t`).
pub fn plus(t: SystemTime, seconds: i64) -> SystemTime {
    if seconds >= 0 {
        t + Duration::from_secs(seconds as u64)
    } else {
        t - Duration::from_secs(seconds.unsigned_abs())
    }
}

/// The server's clock (`now()`), for rows that the scheduled run, which
/// reads that clock, must find due or live.
pub async fn server_now(client: &Client) -> SystemTime {
    client.query_one("SELECT now()", &[]).await.unwrap().get(0)
}
