//! Join tokens in etcd, under mkectl's own prefix (`/mkectl/tokens/<id>`,
//! never under the apiserver's `/registry`), so every controller of an HA
//! set honours the same tokens. Only a SHA-256 of the secret is stored.
//!
//! Expiry is enforced twice: `authenticate` compares `expires` with the
//! clock, and the record sits on an etcd lease that deletes it
//! [`RETENTION`] after expiry (until then a join with it is told "expired"
//! rather than "unknown"). `invalidate` turns the record into a tombstone on
//! a fresh lease of [`RETENTION`], for the same reason.

use std::time::Duration;

use super::token::{secret_matches, unix_now, BootstrapToken, Role, StoredToken};
use super::JoinError;

/// Key prefix of the token records.
pub const TOKENS_PREFIX: &str = "/mkectl/tokens/";
/// How long an expired or invalidated record is kept before etcd drops it.
pub const RETENTION: Duration = Duration::from_secs(15 * 60);
/// Longest accepted token description.
pub const MAX_DESCRIPTION: usize = 256;
/// Bound on one etcd call.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Attempts at finding an unused random id.
const ID_ATTEMPTS: usize = 5;

/// Why a presented token was refused.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Unknown id or wrong secret: deliberately not told apart.
    #[error("the token is not valid for this cluster (unknown id or wrong secret)")]
    Unknown,
    #[error("token {id} expired at {at}")]
    Expired { id: String, at: String },
    #[error("token {id} was invalidated at {at}")]
    Invalidated { id: String, at: String },
    #[error("token {id} is a {have} token; this needs a {want} token")]
    WrongRole { id: String, have: Role, want: Role },
    #[error(transparent)]
    Store(#[from] JoinError),
}

impl AuthError {
    /// 401 when the caller is not authenticated, 403 when a genuine token
    /// may not be used, 503 when the store cannot answer.
    pub fn status(&self) -> u16 {
        match self {
            AuthError::Unknown => 401,
            AuthError::Expired { .. }
            | AuthError::Invalidated { .. }
            | AuthError::WrongRole { .. } => 403,
            AuthError::Store(_) => 503,
        }
    }

    /// Stable machine-readable reason.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Unknown => "InvalidToken",
            AuthError::Expired { .. } => "TokenExpired",
            AuthError::Invalidated { .. } => "TokenInvalidated",
            AuthError::WrongRole { .. } => "WrongTokenRole",
            AuthError::Store(_) => "StoreUnavailable",
        }
    }
}

fn rfc3339(secs: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

fn key(id: &str) -> String {
    format!("{TOKENS_PREFIX}{id}")
}

async fn timed<T>(
    what: &'static str,
    fut: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, JoinError> {
    match tokio::time::timeout(CALL_TIMEOUT, fut).await {
        Ok(r) => r.map_err(|source| JoinError::Etcd { what, source }),
        Err(_) => Err(JoinError::Timeout { what }),
    }
}

fn encode(t: &StoredToken) -> Result<Vec<u8>, JoinError> {
    serde_json::to_vec(t).map_err(|e| JoinError::Internal {
        reason: e.to_string(),
    })
}

/// The token store over an etcd client (cheap to clone).
#[derive(Clone)]
pub struct TokenStore {
    client: etcd_client::Client,
}

impl TokenStore {
    pub fn new(client: etcd_client::Client) -> Self {
        Self { client }
    }

    /// Creates a token of `role` valid for `ttl` (`None`: until invalidated).
    /// Returns the full token (shown once, never stored) and its record.
    pub async fn create(
        &self,
        role: Role,
        ttl: Option<Duration>,
        description: &str,
    ) -> Result<(BootstrapToken, StoredToken), JoinError> {
        if description.len() > MAX_DESCRIPTION || description.chars().any(char::is_control) {
            return Err(JoinError::Conflict(format!(
                "description must be at most {MAX_DESCRIPTION} bytes without control characters"
            )));
        }
        let mut client = self.client.clone();
        for _ in 0..ID_ATTEMPTS {
            let token = BootstrapToken::generate();
            let stored = StoredToken::new(&token, role, ttl, description);
            let put_opts = match ttl {
                Some(d) => {
                    let lease = timed(
                        "grant the token lease",
                        client.lease_grant((d + RETENTION).as_secs() as i64, None),
                    )
                    .await?;
                    Some(etcd_client::PutOptions::new().with_lease(lease.id()))
                }
                None => None,
            };
            let k = key(&token.id);
            let txn = etcd_client::Txn::new()
                .when([etcd_client::Compare::version(
                    k.clone(),
                    etcd_client::CompareOp::Equal,
                    0,
                )])
                .and_then([etcd_client::TxnOp::put(k, encode(&stored)?, put_opts)]);
            let resp = timed("store the token", client.txn(txn)).await?;
            if resp.succeeded() {
                return Ok((token, stored));
            }
        }
        Err(JoinError::Internal {
            reason: "could not find an unused token id".into(),
        })
    }

    /// Every stored token (valid, expired or invalidated), by creation time.
    pub async fn list(&self) -> Result<Vec<StoredToken>, JoinError> {
        let mut client = self.client.clone();
        let opts = etcd_client::GetOptions::new().with_prefix();
        let resp = timed("list tokens", client.get(TOKENS_PREFIX, Some(opts))).await?;
        let mut out: Vec<StoredToken> = resp
            .kvs()
            .iter()
            .filter_map(|kv| serde_json::from_slice(kv.value()).ok())
            .collect();
        out.sort_by(|a, b| (a.created, &a.id).cmp(&(b.created, &b.id)));
        Ok(out)
    }

    /// Revokes token `id`. Returns false when there is no such token.
    pub async fn invalidate(&self, id: &str) -> Result<bool, JoinError> {
        let mut client = self.client.clone();
        let k = key(id);
        let resp = timed("read the token", client.get(k.clone(), None)).await?;
        let Some(kv) = resp.kvs().first() else {
            return Ok(false);
        };
        let mut stored: StoredToken =
            serde_json::from_slice(kv.value()).map_err(|e| JoinError::Internal {
                reason: format!("token record {id} unreadable: {e}"),
            })?;
        if stored.invalidated.is_some() {
            return Ok(true);
        }
        stored.invalidated = Some(unix_now());
        let lease = timed(
            "grant the tombstone lease",
            client.lease_grant(RETENTION.as_secs() as i64, None),
        )
        .await?;
        // Only replace the version read, so a concurrent change is not lost.
        let txn = etcd_client::Txn::new()
            .when([etcd_client::Compare::mod_revision(
                k.clone(),
                etcd_client::CompareOp::Equal,
                kv.mod_revision(),
            )])
            .and_then([etcd_client::TxnOp::put(
                k,
                encode(&stored)?,
                Some(etcd_client::PutOptions::new().with_lease(lease.id())),
            )]);
        let resp = timed("invalidate the token", client.txn(txn)).await?;
        if !resp.succeeded() {
            return Err(JoinError::Conflict(format!(
                "token {id} changed while being invalidated; try again"
            )));
        }
        Ok(true)
    }

    /// Checks a presented token: known id, matching secret (constant time),
    /// not invalidated, not expired, of role `want`.
    pub async fn authenticate(
        &self,
        presented: &BootstrapToken,
        want: Role,
    ) -> Result<StoredToken, AuthError> {
        let mut client = self.client.clone();
        let resp = timed("read the token", client.get(key(&presented.id), None)).await?;
        let Some(kv) = resp.kvs().first() else {
            return Err(AuthError::Unknown);
        };
        let stored: StoredToken = serde_json::from_slice(kv.value()).map_err(|e| {
            AuthError::Store(JoinError::Internal {
                reason: format!("token record {} unreadable: {e}", presented.id),
            })
        })?;
        check(&stored, presented, want, unix_now())?;
        Ok(stored)
    }
}

/// The checks of [`TokenStore::authenticate`] on a record read at `now`.
pub fn check(
    stored: &StoredToken,
    presented: &BootstrapToken,
    want: Role,
    now: u64,
) -> Result<(), AuthError> {
    if stored.id != presented.id || !secret_matches(presented.secret(), &stored.secret_sha256) {
        return Err(AuthError::Unknown);
    }
    if let Some(at) = stored.invalidated {
        return Err(AuthError::Invalidated {
            id: stored.id.clone(),
            at: rfc3339(at),
        });
    }
    if stored.expired_at(now) {
        return Err(AuthError::Expired {
            id: stored.id.clone(),
            at: rfc3339(stored.expires.unwrap_or(now)),
        });
    }
    if stored.role != want {
        return Err(AuthError::WrongRole {
            id: stored.id.clone(),
            have: stored.role,
            want,
        });
    }
    Ok(())
}

/// How a token shows in `mkectl token list`.
pub fn status(t: &StoredToken, now: u64) -> &'static str {
    if t.invalidated.is_some() {
        "invalidated"
    } else if t.expired_at(now) {
        "expired"
    } else {
        "valid"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_in_order_secret_then_state_then_role() {
        let t = BootstrapToken::generate();
        let mut s = StoredToken::new(&t, Role::Worker, Some(Duration::from_secs(60)), "");
        let now = s.created;
        assert!(check(&s, &t, Role::Worker, now).is_ok());
        let e = check(&s, &t, Role::Controller, now).unwrap_err();
        assert_eq!((e.status(), e.reason()), (403, "WrongTokenRole"));
        let e = check(&s, &t, Role::Worker, now + 60).unwrap_err();
        assert_eq!((e.status(), e.reason()), (403, "TokenExpired"));
        // A wrong secret says nothing about the token's state.
        let other = BootstrapToken::parse(&format!("{}.0000000000000000", t.id)).unwrap();
        let e = check(&s, &other, Role::Worker, now + 60).unwrap_err();
        assert_eq!((e.status(), e.reason()), (401, "InvalidToken"));
        s.invalidated = Some(now);
        let e = check(&s, &t, Role::Worker, now).unwrap_err();
        assert_eq!((e.status(), e.reason()), (403, "TokenInvalidated"));
        assert_eq!(status(&s, now), "invalidated");
        assert!(!e.to_string().contains(t.secret()));
    }
}
