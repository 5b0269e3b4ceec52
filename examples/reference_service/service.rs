//! The reference service's routes: an OAuth 2.0 token endpoint with the
//! refresh-token grant (RFC 6749 §6) on `TokenStore` (rotation, reuse
//! detection, sessions bound to the client they were issued to), token
//! revocation (RFC 7009), a signed-in user's device list, sign-out of one
//! device and of every other one. `main.rs` serves it; `tests/reference_service.rs` drives it
//! with an OAuth client library written elsewhere (Python's oauthlib).
//!
//! What is a stand-in here, and what a real service puts there:
//! - sign-in is the password grant (RFC 6749 §4.3) against a fixed list of
//!   users; a real service signs people in its own way (the authorization
//!   code flow, a login form) and then calls `TokenStore::issue`;
//! - access tokens are random strings kept in memory for 15 minutes; a real
//!   service issues JWTs or keeps them in its own store.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use token_janitor::{Error, IssueOptions, RevokeReason, RotateOptions, Rotation, TokenStore};
use uuid::Uuid;

/// How long an access token lives.
const ACCESS_TTL: Duration = Duration::from_secs(15 * 60);

/// The clients this service knows (public clients: no secret). A session is
/// bound to the one it was issued to.
pub const CLIENTS: &[&str] = &["reference-app", "other-app"];

/// A signed-in access token: whose, which session, until when.
struct Access {
    user: String,
    session: Uuid,
    expiry: Instant,
}

/// What a handler needs.
#[derive(Clone)]
pub struct Service {
    store: TokenStore,
    /// user id -> password: the stand-in for a real sign-in.
    users: Arc<HashMap<String, String>>,
    /// access token -> whose it is.
    access: Arc<Mutex<HashMap<String, Access>>>,
}

impl Service {
    /// A service over `store` that signs in `users` (user id, password).
    pub fn new(store: TokenStore, users: &[(&str, &str)]) -> Self {
        Self {
            store,
            users: Arc::new(
                users
                    .iter()
                    .map(|(u, p)| ((*u).to_string(), (*p).to_string()))
                    .collect(),
            ),
            access: Arc::default(),
        }
    }

    /// The routes.
    pub fn router(self) -> Router {
        Router::new()
            .route("/oauth/token", post(token))
            .route("/oauth/revoke", post(revoke))
            .route("/sessions", get(sessions))
            .route("/sessions/{id}/sign-out", post(sign_out))
            .route("/sessions/sign-out-others", post(sign_out_others))
            .with_state(self)
    }

    /// A new access token for a session of `user`.
    fn grant_access(&self, user: &str, session: Uuid) -> String {
        let mut bytes = [0u8; 24];
        rand::fill(&mut bytes);
        let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let mut access = self.access.lock().expect("access tokens");
        access.retain(|_, a| a.expiry > Instant::now());
        access.insert(
            token.clone(),
            Access {
                user: user.to_string(),
                session,
                expiry: Instant::now() + ACCESS_TTL,
            },
        );
        token
    }

    /// The user and session of the request's bearer token.
    fn signed_in(&self, headers: &HeaderMap) -> Option<(String, Uuid)> {
        let token = headers
            .get(header::AUTHORIZATION)?
            .to_str()
            .ok()?
            .strip_prefix("Bearer ")?;
        let access = self.access.lock().expect("access tokens");
        let a = access.get(token)?;
        (a.expiry > Instant::now()).then(|| (a.user.clone(), a.session))
    }
}

/// An RFC 6749 §5.2 error response.
fn oauth_error(status: StatusCode, error: &str) -> Response {
    no_store((status, Json(json!({ "error": error }))).into_response())
}

/// Token responses must not be cached (RFC 6749 §5.1).
fn no_store(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

fn server_error(err: &Error) -> Response {
    // The error names what failed (never a token); the client learns nothing.
    eprintln!("reference service: {err}");
    oauth_error(StatusCode::INTERNAL_SERVER_ERROR, "server_error")
}

#[derive(Deserialize)]
struct TokenRequest {
    grant_type: String,
    client_id: Option<String>,
    username: Option<String>,
    password: Option<String>,
    refresh_token: Option<String>,
    /// A name for the device list ("Firefox on a laptop"), at sign-in.
    device: Option<String>,
}

/// The request's client, when it is one this service knows.
fn known_client(client_id: Option<&str>) -> Option<&str> {
    client_id.filter(|id| CLIENTS.contains(id))
}

/// `POST /oauth/token`: the password grant (sign-in) and the refresh-token
/// grant (rotation). Every refresh failure is `invalid_grant` (RFC 6749
/// §5.2): the client signs in again; what happened (a replay, an expired or
/// revoked family) is the server's business, recorded in
/// `auth.security_events` for a replay. Each session is bound to the client
/// it was issued to: another client presenting its refresh token gets
/// `invalid_grant`, and the session lives on (RFC 6819 §5.2.2.2).
async fn token(State(service): State<Service>, Form(request): Form<TokenRequest>) -> Response {
    let Some(client) = known_client(request.client_id.as_deref()) else {
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client");
    };
    let issued = match request.grant_type.as_str() {
        "password" => {
            let (Some(user), Some(password)) = (&request.username, &request.password) else {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_request");
            };
            if service.users.get(user) != Some(password) {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
            }
            let mut options = IssueOptions::default().client_id(client);
            if let Some(device) = &request.device {
                options = options.device_label(device.clone());
            }
            match service.store.issue_with_options(user, &options).await {
                Ok(issued) => issued,
                Err(err) => return server_error(&err),
            }
        }
        "refresh_token" => {
            let Some(presented) = &request.refresh_token else {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_request");
            };
            let options = RotateOptions::default().client_id(client);
            match service.store.rotate_with_options(presented, &options).await {
                Ok(Rotation::Rotated(next)) => next,
                Ok(_) | Err(Error::MalformedToken(_)) => {
                    return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
                }
                Err(err) => return server_error(&err),
            }
        }
        _ => return oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type"),
    };
    let access = service.grant_access(&issued.user_id, issued.session_id);
    no_store(
        Json(json!({
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": ACCESS_TTL.as_secs(),
            "refresh_token": issued.token.expose(),
        }))
        .into_response(),
    )
}

#[derive(Deserialize)]
struct RevokeRequest {
    token: String,
    client_id: Option<String>,
}

/// `POST /oauth/revoke` (RFC 7009): revokes the family of a genuine refresh
/// token; 200 whatever the token was (§2.2), so the answer tells a caller
/// nothing about it. Access tokens here die with their 15 minutes.
async fn revoke(State(service): State<Service>, Form(request): Form<RevokeRequest>) -> Response {
    if known_client(request.client_id.as_deref()).is_none() {
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client");
    }
    match service
        .store
        .revoke_token(&request.token, RevokeReason::Logout)
        .await
    {
        Ok(_) | Err(Error::MalformedToken(_)) => StatusCode::OK.into_response(),
        Err(err) => server_error(&err),
    }
}

/// Seconds since the epoch, for JSON.
fn epoch_seconds(time: std::time::SystemTime) -> u64 {
    time.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `GET /sessions`: the signed-in user's devices.
async fn sessions(State(service): State<Service>, headers: HeaderMap) -> Response {
    let Some((user, current)) = service.signed_in(&headers) else {
        return StatusCode::UNAUTHORIZED.into_response();
    };
    match service.store.list_sessions(&user).await {
        Ok(list) => {
            let list: Vec<Value> = list
                .iter()
                .map(|s| {
                    json!({
                        "session_id": s.session_id.to_string(),
                        "created_at": epoch_seconds(s.created_at),
                        "last_used_at": epoch_seconds(s.last_used_at),
                        "device": s.device_label,
                        "client_id": s.client_id,
                        "revoked": s.revoked_at.is_some(),
                        "current": s.session_id == current,
                    })
                })
                .collect();
            Json(json!({ "sessions": list })).into_response()
        }
        Err(err) => server_error(&err),
    }
}

/// `POST /sessions/{id}/sign-out`: signs one of the user's own devices out.
/// The session must be the signed-in user's: `revoke_session` takes the
/// caller's word for the id, so the service checks it against the user's list.
async fn sign_out(
    State(service): State<Service>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let Some((user, _)) = service.signed_in(&headers) else {
        return StatusCode::UNAUTHORIZED.into_response();
    };
    let Ok(id) = Uuid::parse_str(&id) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let owned = match service.store.list_sessions(&user).await {
        Ok(list) => list.iter().any(|s| s.session_id == id),
        Err(err) => return server_error(&err),
    };
    if !owned {
        return StatusCode::NOT_FOUND.into_response();
    }
    match service.store.revoke_session(id, RevokeReason::Logout).await {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(err) => server_error(&err),
    }
}

/// `POST /sessions/sign-out-others`: signs out every device of the user but
/// the one asking ("sign out everywhere else").
async fn sign_out_others(State(service): State<Service>, headers: HeaderMap) -> Response {
    let Some((user, current)) = service.signed_in(&headers) else {
        return StatusCode::UNAUTHORIZED.into_response();
    };
    match service
        .store
        .revoke_user_sessions_except(&user, current, RevokeReason::Logout)
        .await
    {
        Ok(revoked) => Json(json!({ "signed_out": revoked })).into_response(),
        Err(err) => server_error(&err),
    }
}
