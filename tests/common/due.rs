//! The one model of what the cleanup deletes (docs/design.md §5): given a
//! row's state, the retention policy and the clock, whether the purge may
//! delete it and as which kind. tests/purge.rs and tests/properties.rs hold
//! the database to it; the seeder writes rows in these terms.

use std::time::SystemTime;

use tokio_postgres::Client;

use super::plus;

/// The retentions of auth.cleanup_policy, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub expired: i64,
    pub revoked: i64,
    pub rotated: i64,
}

impl Policy {
    /// The policy's defaults: expired 1 day, revoked 7 days, rotated 1 hour.
    pub const DEFAULT: Policy = Policy {
        expired: super::DAY,
        revoked: 7 * super::DAY,
        rotated: super::HOUR,
    };

    /// Writes these retentions into auth.cleanup_policy.
    pub async fn apply(self, client: &Client) {
        client
            .execute(
                "UPDATE auth.cleanup_policy SET expired_retention = make_interval(secs => $1),
                     revoked_retention = make_interval(secs => $2), rotated_retention = make_interval(secs => $3)",
                &[&(self.expired as f64), &(self.revoked as f64), &(self.rotated as f64)],
            )
            .await
            .unwrap();
    }
}

/// A revoke_reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Rotated,
    Logout,
    Admin,
    ReuseDetected,
}

impl Reason {
    /// The reason as the tables store it.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Rotated => "rotated",
            Reason::Logout => "logout",
            Reason::Admin => "admin",
            Reason::ReuseDetected => "reuse_detected",
        }
    }

    /// The reason stored as `text`; panics on one the tables may not hold.
    pub fn parse(text: &str) -> Reason {
        [
            Reason::Rotated,
            Reason::Logout,
            Reason::Admin,
            Reason::ReuseDetected,
        ]
        .into_iter()
        .find(|r| r.as_str() == text)
        .unwrap_or_else(|| panic!("unknown revoke_reason {text:?}"))
    }

    /// A revocation for this reason at `t`.
    pub fn at(self, t: SystemTime) -> Revocation {
        Revocation {
            at: t,
            reason: self,
        }
    }
}

/// When and why a token or a session was revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Revocation {
    pub at: SystemTime,
    pub reason: Reason,
}

/// The kinds the purge counts deleted token rows as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Expired,
    Revoked,
    Rotated,
}

/// A token row as the purge sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenRow {
    pub expires_at: SystemTime,
    pub revoked: Option<Revocation>,
}

impl TokenRow {
    /// A token that is not revoked.
    pub fn expiring(expires_at: SystemTime) -> TokenRow {
        TokenRow {
            expires_at,
            revoked: None,
        }
    }

    /// Not revoked and not expired at `now` (invariant 1: never deleted).
    pub fn live(&self, now: SystemTime) -> bool {
        self.revoked.is_none() && self.expires_at >= now
    }

    /// The kind the purge deletes this row as at `now`, or None while it
    /// must stay: expired past expired retention (whatever its revoke
    /// state), else revoked 'rotated' past rotated retention, else revoked
    /// for another reason past revoked retention.
    pub fn due(&self, policy: Policy, now: SystemTime) -> Option<Kind> {
        if self.expires_at < plus(now, -policy.expired) {
            return Some(Kind::Expired);
        }
        match self.revoked? {
            Revocation {
                at,
                reason: Reason::Rotated,
            } => (at < plus(now, -policy.rotated)).then_some(Kind::Rotated),
            Revocation { at, .. } => (at < plus(now, -policy.revoked)).then_some(Kind::Revoked),
        }
    }
}

/// A session row as the purge sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionRow {
    pub refresh_expires_at: SystemTime,
    pub revoked: Option<Revocation>,
}

impl SessionRow {
    /// Whether the purge deletes this session at `now`: it is dead (expired
    /// past expired retention, or revoked past revoked retention) and
    /// `has_tokens` is false, no token row of it is left.
    pub fn due(&self, policy: Policy, now: SystemTime, has_tokens: bool) -> bool {
        let dead = self.refresh_expires_at < plus(now, -policy.expired)
            || self
                .revoked
                .is_some_and(|r| r.at < plus(now, -policy.revoked));
        dead && !has_tokens
    }
}
