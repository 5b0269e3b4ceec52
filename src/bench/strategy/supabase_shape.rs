//! `supabase-shape`: Supabase Auth's cleanup, `DELETE … WHERE id IN (SELECT
//! id … LIMIT 100 FOR UPDATE SKIP LOCKED)`, one statement after another.

use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio_postgres::Client;

use super::{Role, Strategy, in_batches};
use anyhow::Result;

/// Batches of 100 locked-or-skipped due rows, in no particular order.
pub struct SupabaseShape;

impl Strategy for SupabaseShape {
    fn name(&self) -> &'static str {
        "supabase-shape"
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
                 LIMIT 100 FOR UPDATE SKIP LOCKED)"
        );
        Box::pin(async move { in_batches(self, client, &statement, cap).await })
    }
}
