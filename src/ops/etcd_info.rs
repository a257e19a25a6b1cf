//! etcd as operators see it: members and leader through the cluster and
//! maintenance APIs, with the apiserver's etcd client certificate (the only
//! client identity etcd trusts besides its peers).

use std::time::Duration;

use tokio::sync::Mutex;

use super::model::{EtcdMember, EtcdStatus};
use crate::etcd::{connect, EtcdClientTls};

/// Bound on one membership query.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(3);

/// Queries one etcd endpoint, reusing its connection between calls.
pub struct EtcdInfo {
    endpoint: String,
    tls: EtcdClientTls,
    client: Mutex<Option<etcd_client::Client>>,
}

impl EtcdInfo {
    pub fn new(endpoint: String, tls: EtcdClientTls) -> Self {
        Self {
            endpoint,
            tls,
            client: Mutex::new(None),
        }
    }

    /// Members and leader; an unreachable etcd gives a status whose `error`
    /// says why.
    pub async fn status(&self) -> EtcdStatus {
        let mut guard = self.client.lock().await;
        if guard.is_none() {
            match connect(&self.endpoint, &self.tls).await {
                Ok(c) => *guard = Some(c),
                Err(e) => return unavailable(crate::telemetry::Chain(&e).to_string()),
            }
        }
        let Some(client) = guard.as_mut() else {
            return unavailable("no client".into());
        };
        match tokio::time::timeout(QUERY_TIMEOUT, query(client)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                // Reconnect next time (etcd restarted, certificate renewed).
                *guard = None;
                unavailable(e.to_string())
            }
            Err(_) => {
                *guard = None;
                unavailable(format!("no answer within {QUERY_TIMEOUT:?}"))
            }
        }
    }
}

fn unavailable(error: String) -> EtcdStatus {
    EtcdStatus {
        error: Some(error),
        ..EtcdStatus::default()
    }
}

async fn query(client: &mut etcd_client::Client) -> Result<EtcdStatus, etcd_client::Error> {
    let list = client.member_list().await?;
    let status = client.status().await?;
    let leader_id = status.leader();
    let members: Vec<EtcdMember> = list
        .members()
        .iter()
        .map(|m| EtcdMember {
            id: format!("{:x}", m.id()),
            name: m.name().to_string(),
            peer_urls: m.peer_urls().to_vec(),
            client_urls: m.client_urls().to_vec(),
            learner: m.is_learner(),
            leader: m.id() == leader_id,
        })
        .collect();
    let leader = (leader_id != 0).then(|| {
        members
            .iter()
            .find(|m| m.leader && !m.name.is_empty())
            .map(|m| m.name.clone())
            .unwrap_or_else(|| format!("{leader_id:x}"))
    });
    Ok(EtcdStatus {
        members,
        leader,
        version: Some(status.version().to_string()),
        db_size_bytes: Some(status.db_size()),
        error: None,
    })
}
