//! Refresh token strings: `rt1_` + base64url(session id ‖ generation ‖ 32
//! random bytes). The session id and generation are the selector the database
//! looks the row up by; only the SHA-256 of the random part is stored.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::error::{Error, Result};

const PREFIX: &str = "rt1_";
const SECRET_LEN: usize = 32;
const PAYLOAD_LEN: usize = 16 + 4 + SECRET_LEN;

/// A refresh token string. It is a credential: `Debug` redacts it, there is
/// no `Display`, and [`RefreshToken::expose`] is the one way to read it.
#[derive(Clone, PartialEq, Eq)]
pub struct RefreshToken(String);

impl RefreshToken {
    /// The token string, to hand to the client. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
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

    /// The token string for this secret at (session, generation).
    pub(crate) fn token(&self, session_id: Uuid, generation: i32) -> RefreshToken {
        let mut payload = Vec::with_capacity(PAYLOAD_LEN);
        payload.extend_from_slice(session_id.as_bytes());
        payload.extend_from_slice(&generation.to_be_bytes());
        payload.extend_from_slice(&self.0);
        RefreshToken(format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(payload)))
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// A token string taken apart.
#[derive(Debug, Clone)]
pub(crate) struct ParsedToken {
    pub(crate) session_id: Uuid,
    pub(crate) generation: i32,
    pub(crate) secret: Secret,
}

/// Takes a presented token string apart without touching the database.
///
/// # Errors
/// [`Error::MalformedToken`] saying which part is wrong; never panics.
pub(crate) fn parse(token: &str) -> Result<ParsedToken> {
    let body = token
        .strip_prefix(PREFIX)
        .ok_or(Error::MalformedToken("it does not start with rt1_"))?;
    if body.len() != (PAYLOAD_LEN * 4).div_ceil(3) {
        return Err(Error::MalformedToken("it has the wrong length"));
    }
    let payload = URL_SAFE_NO_PAD
        .decode(body)
        .map_err(|_| Error::MalformedToken("it is not base64url"))?;
    if payload.len() != PAYLOAD_LEN {
        return Err(Error::MalformedToken("it has the wrong length"));
    }
    let (id, rest) = payload.split_at(16);
    let (generation, secret) = rest.split_at(4);
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
    Ok(ParsedToken {
        session_id,
        generation,
        secret,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_never_prints_the_token() {
        let secret = Secret::generate();
        let session = Uuid::new_v4();
        let token = secret.token(session, 7);
        let parsed = parse(token.expose()).unwrap();
        assert_eq!(parsed.session_id, session);
        assert_eq!(parsed.generation, 7);
        assert_eq!(parsed.secret.hash(), secret.hash());
        assert!(!format!("{token:?}").contains(token.expose()));
        assert!(!format!("{parsed:?}").contains(&URL_SAFE_NO_PAD.encode(secret.0)));
    }

    #[test]
    fn malformed_strings_are_errors() {
        let good = Secret::generate().token(Uuid::new_v4(), 0);
        let cases = [
            String::new(),
            "rt1_".to_string(),
            "rt2_".to_string() + &good.expose()[4..],
            good.expose()[..good.expose().len() - 1].to_string(),
            good.expose().to_string() + "A",
            {
                let mut corrupt = good.expose().to_string();
                corrupt.replace_range(10..11, "*");
                corrupt
            },
            format!("rt1_{}", URL_SAFE_NO_PAD.encode([0xffu8; PAYLOAD_LEN])),
            "rt1_ünïcødé".to_string(),
        ];
        for case in cases {
            assert!(
                matches!(parse(&case), Err(Error::MalformedToken(_))),
                "accepted {case:?}"
            );
        }
    }
}
