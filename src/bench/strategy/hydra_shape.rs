//! `hydra-shape`: Ory Hydra's janitor, `DELETE … WHERE pk IN (SELECT pk …
//! ORDER BY <time> LIMIT 100)`, one statement after another.

use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio_postgres::Client;

use super::{Role, Strategy, in_batches};
use anyhow::Result;

/// Batches of the 100 oldest due rows by revoke time.
pub struct HydraShape;

impl Strategy for HydraShape {
    fn name(&self) -> &'static str {
        "hydra-shape"
    }

    fn role(&self) -> Role {
        Role::Peer
    }

    fn purge<'a>(
        &'a self,
        client: &'a Client,
        due: &'a str,
        cap: Duration,
    ) -> BoxFuture<'a, Result<i64>> {
        let statement = format!(
            "DELETE FROM auth.refresh_tokens WHERE (session_id, generation) IN (
                 SELECT session_id, generation FROM auth.refresh_tokens WHERE {due}
                 ORDER BY revoked_at LIMIT 100)"
        );
        Box::pin(async move { in_batches(self, client, &statement, cap).await })
    }
}
