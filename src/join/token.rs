//! Join tokens. The string an operator copies carries everything the joining
//! side needs to trust the cluster without trust-on-first-use:
//!
//! `mke1.<base64url(JSON)>` where the JSON holds the join endpoints, a SHA-256
//! pin of the cluster CA public key, the role, and a bootstrap token
//! `[a-z0-9]{6}.[a-z0-9]{16}` (id.secret, as Kubernetes bootstrap tokens).
//! Controllers store only the id and a SHA-256 of the secret.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use rand::Rng;
use serde::{Deserialize, Serialize};

/// Prefix and format version of a token string.
pub const TOKEN_PREFIX: &str = "mke1.";
const ID_LEN: usize = 6;
const SECRET_LEN: usize = 16;
const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
/// Upper bound on a token string (a few endpoints and a pin fit easily).
pub const MAX_TOKEN_LEN: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Worker,
    Controller,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Worker => "worker",
            Role::Controller => "controller",
        })
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("malformed join token: {0}")]
    Malformed(&'static str),
    #[error("malformed bootstrap token: must look like [a-z0-9]{{6}}.[a-z0-9]{{16}}")]
    BadBootstrapToken,
}

/// A bootstrap token `id.secret`. Debug never prints the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct BootstrapToken {
    pub id: String,
    secret: String,
}

impl std::fmt::Debug for BootstrapToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BootstrapToken({}.<redacted>)", self.id)
    }
}

fn random_chars(n: usize) -> String {
    let mut rng = rand::rng();
    (0..n)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

fn valid_part(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| ALPHABET.contains(&b))
}

impl BootstrapToken {
    /// A fresh random token from the OS-seeded generator.
    pub fn generate() -> Self {
        Self {
            id: random_chars(ID_LEN),
            secret: random_chars(SECRET_LEN),
        }
    }

    pub fn parse(s: &str) -> Result<Self, TokenError> {
        let (id, secret) = s.split_once('.').ok_or(TokenError::BadBootstrapToken)?;
        if !valid_part(id, ID_LEN) || !valid_part(secret, SECRET_LEN) {
            return Err(TokenError::BadBootstrapToken);
        }
        Ok(Self {
            id: id.into(),
            secret: secret.into(),
        })
    }

    /// The secret half: only for building the token string and the kubelet
    /// bootstrap Secret. Never log it.
    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// `id.secret`, for bearer auth. Never log it.
    pub fn expose(&self) -> String {
        format!("{}.{}", self.id, self.secret)
    }

    /// What controllers store: hex SHA-256 of the secret.
    pub fn secret_hash(&self) -> String {
        hash_secret(&self.secret)
    }
}

/// Hex SHA-256 of a token secret.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, secret.as_bytes()).as_ref())
}

/// Compares a presented secret with a stored hash in constant time.
pub fn secret_matches(secret: &str, stored_hash: &str) -> bool {
    use subtle::ConstantTimeEq;
    let presented = hash_secret(secret);
    presented.as_bytes().ct_eq(stored_hash.as_bytes()).into()
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Payload {
    endpoints: Vec<String>,
    ca_pin: String,
    role: Role,
    token: String,
}

/// A decoded join token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// Join API URLs, e.g. `https://192.0.2.10:9443`.
    pub endpoints: Vec<String>,
    /// `sha256:<hex>` of the cluster CA's SubjectPublicKeyInfo.
    pub ca_pin: String,
    pub role: Role,
    pub bootstrap: BootstrapToken,
}

impl JoinToken {
    /// The opaque string handed to operators.
    pub fn encode(&self) -> String {
        let p = Payload {
            endpoints: self.endpoints.clone(),
            ca_pin: self.ca_pin.clone(),
            role: self.role,
            token: self.bootstrap.expose(),
        };
        // Serializing a struct of strings cannot fail.
        let json = serde_json::to_vec(&p).unwrap_or_default();
        format!(
            "{TOKEN_PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
        )
    }

    pub fn decode(s: &str) -> Result<Self, TokenError> {
        let s = s.trim();
        if s.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed("too long"));
        }
        let body = s
            .strip_prefix(TOKEN_PREFIX)
            .ok_or(TokenError::Malformed("it does not start with mke1."))?;
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| TokenError::Malformed("not base64url"))?;
        let p: Payload =
            serde_json::from_slice(&json).map_err(|_| TokenError::Malformed("bad payload"))?;
        if p.endpoints.is_empty() {
            return Err(TokenError::Malformed("no join endpoint"));
        }
        for e in &p.endpoints {
            if !e.starts_with("https://") {
                return Err(TokenError::Malformed("join endpoints must be https URLs"));
            }
        }
        let pin_hex = p
            .ca_pin
            .strip_prefix("sha256:")
            .ok_or(TokenError::Malformed("CA pin must be sha256:<hex>"))?;
        if pin_hex.len() != 64 || !pin_hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(TokenError::Malformed(
                "CA pin must be sha256:<64 hex digits>",
            ));
        }
        Ok(Self {
            endpoints: p.endpoints,
            ca_pin: p.ca_pin,
            role: p.role,
            bootstrap: BootstrapToken::parse(&p.token)?,
        })
    }
}

/// What a controller stores per token (under `/mkectl/tokens/<id>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StoredToken {
    pub id: String,
    pub secret_sha256: String,
    pub role: Role,
    /// Seconds since the epoch.
    pub created: u64,
    /// Seconds since the epoch; `None` never expires.
    pub expires: Option<u64>,
    #[serde(default)]
    pub description: String,
    /// Seconds since the epoch when `mkectl token invalidate` revoked it; the
    /// record stays a while as a tombstone so a join with it is told why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invalidated: Option<u64>,
}

/// Seconds since the epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl StoredToken {
    pub fn new(
        token: &BootstrapToken,
        role: Role,
        ttl: Option<Duration>,
        description: &str,
    ) -> Self {
        let now = unix_now();
        Self {
            id: token.id.clone(),
            secret_sha256: token.secret_hash(),
            role,
            created: now,
            expires: ttl.map(|d| now + d.as_secs()),
            description: description.into(),
            invalidated: None,
        }
    }

    pub fn expired_at(&self, now: u64) -> bool {
        self.expires.is_some_and(|e| now >= e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> JoinToken {
        JoinToken {
            endpoints: vec!["https://127.0.0.1:9443".into()],
            ca_pin: format!("sha256:{}", "ab".repeat(32)),
            role: Role::Worker,
            bootstrap: BootstrapToken::generate(),
        }
    }

    #[test]
    fn round_trip() {
        let t = sample();
        let s = t.encode();
        assert!(s.starts_with("mke1."));
        assert_eq!(JoinToken::decode(&s).unwrap(), t);
    }

    #[test]
    fn bootstrap_token_shape() {
        let t = BootstrapToken::generate();
        let s = t.expose();
        assert_eq!(s.len(), 23);
        assert_eq!(BootstrapToken::parse(&s).unwrap(), t);
        assert!(!format!("{t:?}").contains(t.secret()));
        for bad in [
            "abc.def",
            "ABCDEF.0123456789abcdef",
            "abcdef0123456789abcdef",
            "abcdef.0123456789abcde!",
        ] {
            assert!(BootstrapToken::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn malformed_tokens_are_refused() {
        for bad in ["", "mke1.", "mke2.abc", "mke1.!!!", "mke1.e30"] {
            assert!(JoinToken::decode(bad).is_err(), "{bad}");
        }
        let mut t = sample();
        t.ca_pin = "md5:00".into();
        assert!(JoinToken::decode(&t.encode()).is_err());
        let mut t = sample();
        t.endpoints = vec!["http://127.0.0.1:9443".into()];
        assert!(JoinToken::decode(&t.encode()).is_err());
    }

    #[test]
    fn stored_hash_matches_only_the_secret() {
        let t = BootstrapToken::generate();
        let st = StoredToken::new(&t, Role::Worker, Some(Duration::from_secs(60)), "x");
        assert!(secret_matches(t.secret(), &st.secret_sha256));
        assert!(!secret_matches("0123456789abcdef", &st.secret_sha256));
        assert!(!st.expired_at(st.created));
        assert!(st.expired_at(st.created + 60));
        let forever = StoredToken::new(&t, Role::Controller, None, "");
        assert!(!forever.expired_at(u64::MAX));
    }
}
