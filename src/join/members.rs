//! etcd membership changes made by the join API on behalf of controllers:
//! add a joining controller as a learner, promote it once it is in sync,
//! remove a leaving one without breaking quorum.
//!
//! etcd 3.4 allows one learner at a time, so a second controller joining
//! while the first still catches up is told to retry (503).

use std::collections::BTreeSet;
use std::time::Duration;

use etcd_client::{Client, Member, MemberAddOptions};

use super::wire::{LeaveResponse, PromoteResponse};

/// Bound on one membership call.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a membership change did not happen.
#[derive(Debug, thiserror::Error)]
pub enum MemberError {
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Retry(String),
    #[error("{0}")]
    NotFound(String),
    #[error("etcd: {0}")]
    Etcd(String),
}

impl MemberError {
    pub fn status(&self) -> u16 {
        match self {
            MemberError::Conflict(_) => 409,
            MemberError::Retry(_) | MemberError::Etcd(_) => 503,
            MemberError::NotFound(_) => 404,
        }
    }

    pub fn reason(&self) -> &'static str {
        match self {
            MemberError::Conflict(_) => "Conflict",
            MemberError::Retry(_) => "TryAgain",
            MemberError::NotFound(_) => "MemberNotFound",
            MemberError::Etcd(_) => "EtcdUnavailable",
        }
    }
}

async fn timed<T>(
    fut: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, MemberError> {
    match tokio::time::timeout(CALL_TIMEOUT, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(classify(&e)),
        Err(_) => Err(MemberError::Etcd("request timed out".into())),
    }
}

fn classify(e: &etcd_client::Error) -> MemberError {
    let text = e.to_string();
    if text.contains("too many learner members") {
        MemberError::Retry(
            "another controller is joining (etcd allows one learner at a time); retry shortly"
                .into(),
        )
    } else if text.contains("unhealthy cluster") {
        // etcd wants every voting member connected for its health interval
        // (5 s) before a membership change: right after another join.
        MemberError::Retry(format!(
            "etcd accepts a membership change only when every voting member has been connected for 5 s: a controller is down or just (re)started; bring it back or `mkectl reset` it, then retry ({text})"
        ))
    } else if text.contains("not enough started members") {
        MemberError::Conflict(format!("etcd refused the change to keep quorum: {text}"))
    } else {
        MemberError::Etcd(text)
    }
}

/// Voting members of a member list.
fn voters(members: &[Member]) -> impl Iterator<Item = &Member> {
    members.iter().filter(|m| !m.is_learner())
}

/// `--initial-cluster` for the member `new_id` called `new_name`. Members
/// that never started have no name yet; they get a placeholder, which etcd
/// accepts (it matches members by peer URL).
pub fn initial_cluster(members: &[Member], new_id: u64, new_name: &str) -> String {
    let mut parts = Vec::new();
    for m in members {
        let name = if m.id() == new_id {
            new_name.to_string()
        } else if m.name().is_empty() {
            format!("unstarted-{:x}", m.id())
        } else {
            m.name().to_string()
        };
        for url in m.peer_urls() {
            parts.push(format!("{name}={url}"));
        }
    }
    parts.join(",")
}

/// Adds `name` at `peer_url` as a learner and returns (member id, initial
/// cluster). A learner already registered with that peer URL (an earlier
/// attempt that died before starting etcd) is reused.
pub async fn add_learner(
    client: &mut Client,
    name: &str,
    peer_url: &str,
) -> Result<(u64, String), MemberError> {
    let list = timed(client.member_list()).await?;
    let members = list.members().to_vec();
    if let Some(m) = members
        .iter()
        .find(|m| m.peer_urls().iter().any(|u| u == peer_url))
    {
        if m.is_learner() && (m.name().is_empty() || m.name() == name) {
            return Ok((m.id(), initial_cluster(&members, m.id(), name)));
        }
        return Err(MemberError::Conflict(format!(
            "etcd already has member {:?} with peer URL {peer_url}; if that node was rebuilt, run `mkectl reset` on it (or remove the member) before joining again",
            m.name()
        )));
    }
    if let Some(m) = members.iter().find(|m| m.name() == name) {
        return Err(MemberError::Conflict(format!(
            "etcd already has a member named {name:?} (peer URLs {:?}); node names must be unique",
            m.peer_urls()
        )));
    }
    let resp =
        timed(client.member_add([peer_url], Some(MemberAddOptions::new().with_is_learner())))
            .await?;
    let id = resp
        .member()
        .map(|m| m.id())
        .ok_or_else(|| MemberError::Etcd("member add returned no member".into()))?;
    Ok((id, initial_cluster(resp.member_list(), id, name)))
}

/// Promotes learner `id`. A member that already votes counts as promoted; a
/// learner still catching up answers `voting: false`.
pub async fn promote(client: &mut Client, id: u64) -> Result<PromoteResponse, MemberError> {
    let list = timed(client.member_list()).await?;
    let Some(m) = list.members().iter().find(|m| m.id() == id) else {
        return Err(MemberError::NotFound(format!(
            "etcd has no member {id:x}; it was removed (join again with a token after `mkectl reset`)"
        )));
    };
    if !m.is_learner() {
        return Ok(PromoteResponse {
            voting: true,
            detail: String::new(),
        });
    }
    match tokio::time::timeout(CALL_TIMEOUT, client.member_promote(id)).await {
        Ok(Ok(_)) => Ok(PromoteResponse {
            voting: true,
            detail: String::new(),
        }),
        Ok(Err(e)) => {
            let text = e.to_string();
            if text.contains("in sync with leader") {
                Ok(PromoteResponse {
                    voting: false,
                    detail: "the learner is still catching up with the leader".into(),
                })
            } else if text.contains("can only promote a learner member") {
                Ok(PromoteResponse {
                    voting: true,
                    detail: String::new(),
                })
            } else {
                Err(classify(&e))
            }
        }
        Err(_) => Err(MemberError::Etcd("promote timed out".into())),
    }
}

/// Whether removing one voting member from `voting` members keeps quorum:
/// the `healthy_remaining` other members must be a majority of `voting - 1`.
/// Returns the quorum needed when it does not.
pub fn removal_keeps_quorum(voting: usize, healthy_remaining: usize) -> Result<(), usize> {
    if voting <= 1 {
        // Removing the last member is impossible (etcd refuses it).
        return Err(1);
    }
    let quorum = (voting - 1) / 2 + 1;
    if healthy_remaining >= quorum {
        Ok(())
    } else {
        Err(quorum)
    }
}

/// Removes member `name`. `healthy` names the controllers currently alive
/// (registered); unless `force`, the removal must leave a quorum of them.
pub async fn remove(
    client: &mut Client,
    name: &str,
    force: bool,
    healthy: &BTreeSet<String>,
) -> Result<LeaveResponse, MemberError> {
    let list = timed(client.member_list()).await?;
    let members = list.members();
    let Some(m) = members.iter().find(|m| m.name() == name) else {
        return Ok(LeaveResponse {
            removed: false,
            members: voters(members).count(),
        });
    };
    let voting = voters(members).count();
    if !m.is_learner() && !force {
        let healthy_remaining = voters(members)
            .filter(|o| o.id() != m.id() && healthy.contains(o.name()))
            .count();
        if let Err(quorum) = removal_keeps_quorum(voting, healthy_remaining) {
            return Err(MemberError::Conflict(if voting <= 1 {
                format!(
                    "{name} is the only voting etcd member; removing it would destroy the cluster"
                )
            } else {
                format!(
                    "removing {name} would leave {} voting members of which {healthy_remaining} are healthy, below the quorum of {quorum}; bring the other controllers back first, or use --force",
                    voting - 1
                )
            }));
        }
    }
    let resp = timed(client.member_remove(m.id())).await?;
    Ok(LeaveResponse {
        removed: true,
        members: voters(resp.members()).count(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quorum_after_removal() {
        // 3 members, 2 others healthy: 2 left need 2.
        assert!(removal_keeps_quorum(3, 2).is_ok());
        // 3 members, 1 other healthy: 2 left need 2.
        assert_eq!(removal_keeps_quorum(3, 1), Err(2));
        // 4 members, 2 others healthy: 3 left need 2.
        assert!(removal_keeps_quorum(4, 2).is_ok());
        assert_eq!(removal_keeps_quorum(4, 1), Err(2));
        // 5 members, 3 others healthy: 4 left need 3.
        assert!(removal_keeps_quorum(5, 3).is_ok());
        assert_eq!(removal_keeps_quorum(5, 2), Err(3));
        // 2 members: the other alone is a quorum of 1.
        assert!(removal_keeps_quorum(2, 1).is_ok());
        assert_eq!(removal_keeps_quorum(2, 0), Err(1));
        assert_eq!(removal_keeps_quorum(1, 0), Err(1));
    }
}
