//! `spec.konnectivity` types shared with the konnectivity server (which
//! re-exports them).

use std::fmt;
use std::str::FromStr;

/// Where the server takes an agent's identity from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentIdentity {
    /// From the client certificate; the headers may only repeat it.
    #[default]
    Certificate,
    /// From the `agentid` and `agentidentifiers` headers (upstream's
    /// behaviour): for agents that share one certificate or authenticate
    /// otherwise. Any agent with a certificate from the CA can then claim
    /// any node.
    Headers,
}

impl AgentIdentity {
    pub fn name(self) -> &'static str {
        match self {
            AgentIdentity::Certificate => "certificate",
            AgentIdentity::Headers => "headers",
        }
    }
}

impl fmt::Display for AgentIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An agent identity source other than `certificate` or `headers`.
#[derive(Debug, thiserror::Error)]
#[error("unknown agent identity source {0:?} (expected certificate or headers)")]
pub struct UnknownAgentIdentity(pub String);

impl FromStr for AgentIdentity {
    type Err = UnknownAgentIdentity;
    fn from_str(s: &str) -> Result<Self, UnknownAgentIdentity> {
        match s.trim() {
            "certificate" => Ok(AgentIdentity::Certificate),
            "headers" => Ok(AgentIdentity::Headers),
            other => Err(UnknownAgentIdentity(other.to_string())),
        }
    }
}
