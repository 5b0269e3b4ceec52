//! `single-delete`: one `DELETE … WHERE <due>`, the speed limit of this
//! machine and so the baseline.

use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio_postgres::Client;

use super::{Role, Strategy, failed};
use anyhow::Result;

/// Every due row in one statement.
pub struct SingleDelete;

impl Strategy for SingleDelete {
    fn name(&self) -> &'static str {
        "single-delete"
    }

    fn role(&self) -> Role {
        Role::Baseline
    }

    fn purge<'a>(
        &'a self,
        client: &'a Client,
        due: &'a str,
        _cap: Duration,
    ) -> BoxFuture<'a, Result<i64>> {
        Box::pin(async move {
            let deleted = client
                .execute(&format!("DELETE FROM auth.refresh_tokens WHERE {due}"), &[])
                .await
                .map_err(failed(self))?;
            Ok(deleted as i64)
        })
    }
}
