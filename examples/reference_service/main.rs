//! A reference service on `TokenStore`: the OAuth 2.0 refresh-token grant
//! with rotation and reuse detection, token revocation (RFC 7009), a
//! session list and sign-out (see `service.rs` for what is a stand-in).
//!
//! ```sh
//! token-janitor migrate                  # once per deploy, as the deployer
//! DATABASE_URL=postgres://myservice@db/app BIND=127.0.0.1:8080 \
//!     cargo run --example reference_service
//! curl -d grant_type=password -d client_id=reference-app \
//!      -d username=alice -d password=wonderland http://127.0.0.1:8080/oauth/token
//! ```
//!
//! Its database role needs only `token_janitor_app`
//! (`GRANT token_janitor_app TO myservice`).

mod service;

use token_janitor::{DatabaseUrl, TokenStore};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("DATABASE_URL")
        .map_err(|_| "set DATABASE_URL to the application role's postgres:// URL")?;
    let bind = std::env::var("BIND").unwrap_or_else(|_| "127.0.0.1:8080".to_string());
    let store = TokenStore::new(DatabaseUrl::parse(&url)?.pool(8));
    let app = service::Service::new(store, &[("alice", "wonderland"), ("bob", "builder")]).router();
    let listener = tokio::net::TcpListener::bind(&bind).await?;
    eprintln!("reference service on http://{bind}");
    axum::serve(listener, app).await?;
    Ok(())
}
