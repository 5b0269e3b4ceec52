//! The ways `bench` deletes the due rows, behind one trait, one file each.
//! Adding a strategy is a file here and its line in [`ALL`]; the run, the
//! ratios and the report find the baseline and token-janitor by their
//! [`Role`], never by position or name.

mod hydra_shape;
mod single_delete;
mod supabase_shape;
mod token_janitor;

use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use tokio_postgres::Client;

pub use hydra_shape::HydraShape;
pub use single_delete::SingleDelete;
pub use supabase_shape::SupabaseShape;
pub use token_janitor::TokenJanitor;

use anyhow::Result;

use crate::error::db;

/// Every strategy, in the order each layout runs them.
pub const ALL: &[&dyn Strategy] = &[&SingleDelete, &TokenJanitor, &SupabaseShape, &HydraShape];

/// The due rows, as the strategies that write their own DELETE name them:
/// the `rotated` kind of `auth.purge_targets` (every due row the seed makes
/// is a rotated one) with the policy's retention written in as a literal
/// (`now() - interval '01:00:00'`), as a DBA would write the statement, so
/// that they delete exactly what the purge deletes and the planner
/// estimates the cutoff and picks its own best plan. A cutoff read from the
/// policy in a subquery is opaque to the planner, which then guessed a
/// slower bitmap plan: the baseline was slower than the DELETE a DBA writes.
///
/// # Errors
/// The statement's error when the definition cannot be read.
pub async fn due_predicate(client: &Client) -> Result<String> {
    Ok(client
        .query_one(
            "SELECT replace(t.due, '$1', pg_catalog.format('(now() - interval %L)', p.rotated_retention))
             FROM auth.purge_targets() t, auth.cleanup_policy p WHERE t.kind = 'rotated'",
            &[],
        )
        .await
        .map_err(db("reading the rotated kind of auth.purge_targets"))?
        .get(0))
}

/// What a strategy is in the comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The speed limit: every strategy's rate is reported relative to its
    /// rate. Runs on every layout; exactly one strategy is the baseline.
    Baseline,
    /// token-janitor itself, the one the report is about. Runs on every
    /// layout; exactly one strategy is the subject.
    Subject,
    /// Another auth server's cleanup shape. Runs on the first layout only
    /// (peers take minutes), for at most the peer cap.
    Peer,
}

/// A way to delete the due rows of a seeded copy of the token table.
pub trait Strategy: Sync {
    /// Its name in the report (and, with `_` for `-`, in its scratch
    /// database's name).
    fn name(&self) -> &'static str;

    /// What it is in the comparison.
    fn role(&self) -> Role;

    /// Deletes the due rows (`due`: their predicate, [`due_predicate`])
    /// through `client`; a strategy that loops stops once `cap` has passed.
    /// Returns how many rows it deleted.
    fn purge<'a>(
        &'a self,
        client: &'a Client,
        due: &'a str,
        cap: Duration,
    ) -> BoxFuture<'a, Result<i64>>;
}

/// The error of `strategy` failing at `client`'s request.
fn failed(strategy: &dyn Strategy) -> impl FnOnce(tokio_postgres::Error) -> crate::Error {
    db(format!("running strategy {}", strategy.name()))
}

/// The peers' loop: runs `statement` (a DELETE of at most a batch of due
/// rows) until it deletes nothing or `cap` has passed; returns the rows
/// deleted.
async fn in_batches(
    strategy: &dyn Strategy,
    client: &Client,
    statement: &str,
    cap: Duration,
) -> Result<i64> {
    let statement = client.prepare(statement).await.map_err(failed(strategy))?;
    let deadline = Instant::now() + cap;
    let mut total = 0;
    while Instant::now() < deadline {
        let n = client
            .execute(&statement, &[])
            .await
            .map_err(failed(strategy))?;
        if n == 0 {
            break;
        }
        total += n as i64;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ratios need exactly one baseline, the report exactly one
    /// subject, and scratch databases distinct names.
    #[test]
    fn one_baseline_one_subject_distinct_names() {
        for role in [Role::Baseline, Role::Subject] {
            assert_eq!(
                ALL.iter().filter(|s| s.role() == role).count(),
                1,
                "{role:?}"
            );
        }
        let mut names: Vec<&str> = ALL.iter().map(|s| s.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ALL.len());
    }
}
