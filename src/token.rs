//! Refresh token strings. Format `rt2_` (issued today): base64url(session id
//! ‖ generation ‖ 32 random bytes ‖ 16-byte authenticator). Format `rt1_`
//! (issued before, still accepted until it expires): the same without the
//! authenticator. The session id and generation are the selector the database
//! looks the row up by; only the SHA-256 of the random part (the secret) is
//! stored. The authenticator, an HMAC under the session's key that only the
//! database holds, proves the token genuine after its row is purged.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::error::{Error, Result};

const PREFIX_V1: &str = "rt1_";
const PREFIX_V2: &str = "rt2_";
const SECRET_LEN: usize = 32;
/// Length of the authenticator an `rt2_` token carries.
pub(crate) const AUTHENTICATOR_LEN: usize = 16;
const SELECTOR_LEN: usize = 16 + 4;
/// What the successor's seal is bound to, beside its session and generation.
const SEAL_LABEL: &[u8] = b"token-janitor successor seal v1";

/// A refresh token string: one this library issued, or one a client
/// presented ([`RefreshToken::parse`]). It is a credential: `Debug` redacts
/// it, there is no `Display`, and [`RefreshToken::expose`] is the one way to
/// read it.
///
/// ```
/// # async fn example(store: token_janitor::TokenStore) -> token_janitor::Result<()> {
/// let issued = store.issue("user-42").await?;
/// assert!(!format!("{:?}", issued.token).contains(issued.token.expose())); // Debug redacts
/// # Ok(())
/// # }
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct RefreshToken {
    text: String,
    session_id: Uuid,
}

impl RefreshToken {
    /// Reads a presented token string (`rt2_` or `rt1_`) without asking the
    /// database, e.g. to find the session a logout endpoint should revoke.
    ///
    /// Parsing proves only the format, not that the token is genuine, live or
    /// ever issued: anyone who has seen a session id can build a string that
    /// parses to it. Revoke on a parsed token only for a caller already
    /// authenticated as the session's user (check that the session is among
    /// [`crate::TokenStore::list_sessions`] of that user); a refresh goes
    /// through [`crate::TokenStore::rotate`], which checks the secret.
    ///
    /// ```
    /// use token_janitor::RefreshToken;
    ///
    /// let err = RefreshToken::parse("not-a-token").unwrap_err();
    /// assert_eq!(
    ///     err.to_string(),
    ///     "malformed refresh token: it does not start with rt2_ or rt1_"
    /// );
    /// ```
    ///
    /// # Errors
    /// [`Error::MalformedToken`] saying which part is wrong; never panics.
    pub fn parse(token: &str) -> Result<Self> {
        let parsed = parse(token)?;
        Ok(Self {
            text: token.to_owned(),
            session_id: parsed.session_id,
        })
    }

    /// The token string, to hand to the client. Never log it.
    ///
    /// ```
    /// # async fn example(store: token_janitor::TokenStore) -> token_janitor::Result<()> {
    /// let issued = store.issue("user-42").await?;
    /// assert!(issued.token.expose().starts_with("rt2_"));
    /// # Ok(())
    /// # }
    /// ```
    pub fn expose(&self) -> &str {
        &self.text
    }

    /// The session (token family) the token belongs to, as
    /// [`crate::Issued::session_id`] and [`crate::TokenStore::revoke_session`]
    /// name it.
    ///
    /// ```
    /// use token_janitor::{RefreshToken, RevokeReason, TokenStore};
    ///
    /// /// Sign-out of a user already authenticated by their access token: the
    /// /// presented refresh token names the session, which must be theirs.
    /// async fn sign_out(store: &TokenStore, user_id: &str, presented: &str) -> token_janitor::Result<bool> {
    ///     let session_id = RefreshToken::parse(presented)?.session_id();
    ///     let theirs = store.list_sessions(user_id).await?.iter().any(|s| s.session_id == session_id);
    ///     if theirs {
    ///         store.revoke_session(session_id, RevokeReason::Logout).await?;
    ///     }
    ///     Ok(theirs)
    /// }
    /// ```
    pub fn session_id(&self) -> Uuid {
        self.session_id
    }
}

impl std::fmt::Debug for RefreshToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RefreshToken(<redacted>)")
    }
}

/// The random part of a token; its hash is what the database stores.
#[derive(Clone)]
pub(crate) struct Secret([u8; SECRET_LEN]);

impl Secret {
    /// 32 bytes from the thread-local CSPRNG (ChaCha, seeded from the OS).
    pub(crate) fn generate() -> Self {
        let mut bytes = [0u8; SECRET_LEN];
        rand::fill(&mut bytes);
        Self(bytes)
    }

    /// SHA-256 of the secret: the `token_hash` column.
    pub(crate) fn hash(&self) -> Vec<u8> {
        Sha256::digest(self.0).to_vec()
    }

    /// The `rt2_` token string for this secret at (session, generation),
    /// carrying the authenticator the database returned for it.
    ///
    /// # Errors
    /// [`Error::UnexpectedResponse`] when the authenticator is not 16 bytes.
    pub(crate) fn token(
        &self,
        session_id: Uuid,
        generation: i32,
        authenticator: &[u8],
    ) -> Result<RefreshToken> {
        if authenticator.len() != AUTHENTICATOR_LEN {
            return Err(Error::UnexpectedResponse(format!(
                "an authenticator of {} bytes (expected {AUTHENTICATOR_LEN}); is the schema \
                 older than this library? run token-janitor migrate",
                authenticator.len()
            )));
        }
        let mut payload = Vec::with_capacity(SELECTOR_LEN + SECRET_LEN + AUTHENTICATOR_LEN);
        payload.extend_from_slice(session_id.as_bytes());
        payload.extend_from_slice(&generation.to_be_bytes());
        payload.extend_from_slice(&self.0);
        payload.extend_from_slice(authenticator);
        Ok(RefreshToken {
            text: format!("{PREFIX_V2}{}", URL_SAFE_NO_PAD.encode(payload)),
            session_id,
        })
    }

    /// The pad that seals (and opens) the successor at (session, generation)
    /// of the token holding this secret: HMAC-SHA256(this secret, label ‖
    /// session ‖ generation). Only a holder of this secret can compute it;
    /// the database stores its hash, from which the pad cannot be derived.
    fn seal_pad(&self, session_id: Uuid, generation: i32) -> [u8; SECRET_LEN] {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0)
            .expect("HMAC takes a key of any length");
        mac.update(SEAL_LABEL);
        mac.update(session_id.as_bytes());
        mac.update(&generation.to_be_bytes());
        mac.finalize().into_bytes().into()
    }

    /// `successor` sealed under this (its predecessor's) secret, for
    /// `auth.rotate_token`'s p_successor_seal.
    pub(crate) fn seal(&self, successor: &Secret, session_id: Uuid, generation: i32) -> Vec<u8> {
        let pad = self.seal_pad(session_id, generation);
        successor.0.iter().zip(pad).map(|(s, p)| s ^ p).collect()
    }

    /// Opens a seal this secret made: the successor's secret.
    ///
    /// # Errors
    /// [`Error::UnexpectedResponse`] when the seal is not 32 bytes.
    pub(crate) fn open(&self, seal: &[u8], session_id: Uuid, generation: i32) -> Result<Secret> {
        let sealed: [u8; SECRET_LEN] = seal.try_into().map_err(|_| {
            Error::UnexpectedResponse(format!(
                "a successor seal of {} bytes (expected {SECRET_LEN})",
                seal.len()
            ))
        })?;
        let pad = self.seal_pad(session_id, generation);
        let mut bytes = [0u8; SECRET_LEN];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = sealed[i] ^ pad[i];
        }
        Ok(Secret(bytes))
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// A token string taken apart. `Debug` shows neither the session id (it
/// selects a user's family) nor the secret.
#[derive(Clone)]
pub(crate) struct ParsedToken {
    pub(crate) session_id: Uuid,
    pub(crate) generation: i32,
    pub(crate) secret: Secret,
    /// None for an `rt1_` token.
    pub(crate) authenticator: Option<[u8; AUTHENTICATOR_LEN]>,
}

impl std::fmt::Debug for ParsedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParsedToken")
            .field("session_id", &"<redacted>")
            .field("generation", &self.generation)
            .field("secret", &self.secret)
            .field("authenticated", &self.authenticator.is_some())
            .finish()
    }
}

/// Takes a presented token string (`rt2_` or `rt1_`) apart without touching
/// the database.
///
/// # Errors
/// [`Error::MalformedToken`] saying which part is wrong; never panics.
pub(crate) fn parse(token: &str) -> Result<ParsedToken> {
    let (body, authenticator_len) = if let Some(body) = token.strip_prefix(PREFIX_V2) {
        (body, AUTHENTICATOR_LEN)
    } else if let Some(body) = token.strip_prefix(PREFIX_V1) {
        (body, 0)
    } else {
        return Err(Error::MalformedToken("it does not start with rt2_ or rt1_"));
    };
    let payload_len = SELECTOR_LEN + SECRET_LEN + authenticator_len;
    if body.len() != (payload_len * 4).div_ceil(3) {
        return Err(Error::MalformedToken("it has the wrong length"));
    }
    let payload = URL_SAFE_NO_PAD
        .decode(body)
        .map_err(|_| Error::MalformedToken("it is not base64url"))?;
    if payload.len() != payload_len {
        return Err(Error::MalformedToken("it has the wrong length"));
    }
    let (id, rest) = payload.split_at(16);
    let (generation, rest) = rest.split_at(4);
    let (secret, authenticator) = rest.split_at(SECRET_LEN);
    let session_id = Uuid::from_slice(id).map_err(|_| Error::MalformedToken("bad session id"))?;
    let generation = i32::from_be_bytes(
        generation
            .try_into()
            .map_err(|_| Error::MalformedToken("bad generation"))?,
    );
    if generation < 0 {
        return Err(Error::MalformedToken("negative generation"));
    }
    let secret = Secret(
        secret
            .try_into()
            .map_err(|_| Error::MalformedToken("bad secret"))?,
    );
    let authenticator = match authenticator_len {
        0 => None,
        _ => Some(
            authenticator
                .try_into()
                .map_err(|_| Error::MalformedToken("bad authenticator"))?,
        ),
    };
    Ok(ParsedToken {
        session_id,
        generation,
        secret,
        authenticator,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TAG: [u8; AUTHENTICATOR_LEN] = [7; AUTHENTICATOR_LEN];

    /// An `rt1_` string as releases before V4 issued them.
    fn rt1(session: Uuid, generation: i32, secret: &Secret) -> String {
        let mut payload = session.as_bytes().to_vec();
        payload.extend_from_slice(&generation.to_be_bytes());
        payload.extend_from_slice(&secret.0);
        format!("{PREFIX_V1}{}", URL_SAFE_NO_PAD.encode(payload))
    }

    #[test]
    fn round_trips_and_never_prints_the_token_or_its_session() {
        let secret = Secret::generate();
        let session = Uuid::new_v4();
        let token = secret.token(session, 7, &TAG).unwrap();
        assert!(token.expose().starts_with("rt2_"));
        let parsed = parse(token.expose()).unwrap();
        assert_eq!(parsed.session_id, session);
        assert_eq!(parsed.generation, 7);
        assert_eq!(parsed.secret.hash(), secret.hash());
        assert_eq!(parsed.authenticator, Some(TAG));
        assert!(!format!("{token:?}").contains(token.expose()));
        let debug = format!("{parsed:?}");
        assert!(!debug.contains(&URL_SAFE_NO_PAD.encode(secret.0)));
        assert!(!debug.contains(&session.to_string()), "{debug}");
        assert!(!debug.contains(&format!("{:?}", session.as_bytes())));
    }

    #[test]
    fn rt1_tokens_still_parse_without_an_authenticator() {
        let secret = Secret::generate();
        let session = Uuid::new_v4();
        let parsed = parse(&rt1(session, 3, &secret)).unwrap();
        assert_eq!(
            (parsed.session_id, parsed.generation, parsed.authenticator),
            (session, 3, None)
        );
        assert_eq!(parsed.secret.hash(), secret.hash());
    }

    #[test]
    fn a_presented_token_names_its_session_and_prints_nothing() {
        let secret = Secret::generate();
        let session = Uuid::new_v4();
        let issued = secret.token(session, 2, &TAG).unwrap();
        let presented = RefreshToken::parse(issued.expose()).unwrap();
        assert_eq!(presented.session_id(), session);
        assert_eq!(presented, issued);
        assert_eq!(format!("{presented:?}"), "RefreshToken(<redacted>)");
        let old = RefreshToken::parse(&rt1(session, 5, &secret)).unwrap();
        assert_eq!(old.session_id(), session);
    }

    #[test]
    fn a_malformed_presented_token_says_what_is_wrong() {
        let good = Secret::generate().token(Uuid::new_v4(), 0, &TAG).unwrap();
        let negative = format!(
            "rt2_{}",
            URL_SAFE_NO_PAD.encode([0xffu8; SELECTOR_LEN + SECRET_LEN + AUTHENTICATOR_LEN])
        );
        let mut corrupt = good.expose().to_string();
        corrupt.replace_range(10..11, "*");
        for (case, why) in [
            ("Bearer abc", "it does not start with rt2_ or rt1_"),
            (&good.expose()[..40], "it has the wrong length"),
            (&corrupt, "it is not base64url"),
            (&negative, "negative generation"),
        ] {
            let err = RefreshToken::parse(case).unwrap_err();
            assert_eq!(err.to_string(), format!("malformed refresh token: {why}"));
        }
    }

    #[test]
    fn only_the_predecessor_opens_the_seal() {
        let (predecessor, successor) = (Secret::generate(), Secret::generate());
        let session = Uuid::new_v4();
        let seal = predecessor.seal(&successor, session, 4);
        assert_eq!(seal.len(), SECRET_LEN);
        assert_ne!(seal, successor.0.to_vec());
        let opened = predecessor.open(&seal, session, 4).unwrap();
        assert_eq!(opened.0, successor.0);
        // Another secret, generation or session opens something else.
        assert_ne!(
            Secret::generate().open(&seal, session, 4).unwrap().0,
            successor.0
        );
        assert_ne!(predecessor.open(&seal, session, 5).unwrap().0, successor.0);
        assert_ne!(
            predecessor.open(&seal, Uuid::new_v4(), 4).unwrap().0,
            successor.0
        );
        assert!(matches!(
            predecessor.open(&seal[1..], session, 4),
            Err(Error::UnexpectedResponse(_))
        ));
    }

    #[test]
    fn a_token_needs_a_16_byte_authenticator() {
        let secret = Secret::generate();
        assert!(matches!(
            secret.token(Uuid::new_v4(), 0, &[0; 15]),
            Err(Error::UnexpectedResponse(_))
        ));
    }

    #[test]
    fn malformed_strings_are_errors() {
        let good = Secret::generate().token(Uuid::new_v4(), 0, &TAG).unwrap();
        let old = rt1(Uuid::new_v4(), 0, &Secret::generate());
        let cases = [
            String::new(),
            "rt1_".to_string(),
            "rt2_".to_string(),
            "rt3_".to_string() + &good.expose()[4..],
            "rt1_".to_string() + &good.expose()[4..],
            "rt2_".to_string() + &old[4..],
            good.expose()[..good.expose().len() - 1].to_string(),
            good.expose().to_string() + "A",
            {
                let mut corrupt = good.expose().to_string();
                corrupt.replace_range(10..11, "*");
                corrupt
            },
            format!(
                "rt2_{}",
                URL_SAFE_NO_PAD.encode([0xffu8; SELECTOR_LEN + SECRET_LEN + AUTHENTICATOR_LEN])
            ),
            "rt2_ünïcødé".to_string(),
        ];
        for case in cases {
            assert!(
                matches!(parse(&case), Err(Error::MalformedToken(_))),
                "accepted {case:?}"
            );
        }
    }
}
