//! `token-janitor`: one scheduled run, `CALL auth.run_token_cleanup()`,
//! with the policy the bench set; its deleted rows as the run recorded them.

use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio_postgres::Client;

use super::{Role, Strategy, failed};
use anyhow::Result;

/// The cleanup run, in committed batches.
pub struct TokenJanitor;

impl Strategy for TokenJanitor {
    fn name(&self) -> &'static str {
        "token-janitor"
    }

    fn role(&self) -> Role {
        Role::Subject
    }

    /// The run stops at the policy's max_runtime, not at `cap`.
    fn purge<'a>(
        &'a self,
        client: &'a Client,
        _due: &'a str,
        _cap: Duration,
    ) -> BoxFuture<'a, Result<i64>> {
        Box::pin(async move {
            client
                .batch_execute("CALL auth.run_token_cleanup()")
                .await
                .map_err(failed(self))?;
            let row = client
                .query_one(
                    "SELECT auth._token_rows_deleted(deleted_by_kind), status
                     FROM auth.cleanup_runs ORDER BY id DESC LIMIT 1",
                    &[],
                )
                .await
                .map_err(failed(self))?;
            let status: &str = row.get(1);
            if status != "ok" {
                tracing::warn!(status, "the token-janitor run did not finish everything");
            }
            Ok(row.get(0))
        })
    }
}
