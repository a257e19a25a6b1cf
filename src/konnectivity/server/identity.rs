//! Who an agent is: bound to its client certificate (the default), or
//! taken from the `agentid`/`agentidentifiers` headers as upstream's
//! proxy-server does.
//!
//! Under [`AgentIdentity::Certificate`] the agent id is the certificate's
//! common name (`konnectivity-agent:<node>` as the join API and the PKI
//! issue it, read as `<node>`; any other CN as it is), whatever the `agentid`
//! header says, and every `host=`/`ipv4=`/`ipv6=` identifier must be that
//! name or one of the certificate's subject alternative names (the join API
//! records the worker's address there). A worker holding its own
//! certificate can therefore neither take another node's id nor attract
//! dials meant for another node's address; a claim that does not fit is
//! refused. `cidr=` and `default-route=` claim no node and are left alone.

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::backend::Identifiers;
use crate::join::wire::AGENT_CN_PREFIX;

pub use crate::config::konnectivity::AgentIdentity;

/// A host as compared: IP addresses by value, names lower-case.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Host {
    Ip(IpAddr),
    Name(String),
}

impl Host {
    fn parse(s: &str) -> Host {
        let t = s.trim().trim_start_matches('[').trim_end_matches(']');
        match t.parse::<IpAddr>() {
            Ok(ip) => Host::Ip(ip),
            Err(_) => Host::Name(t.to_ascii_lowercase()),
        }
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Ip(ip) => write!(f, "{ip}"),
            Host::Name(n) => f.write_str(n),
        }
    }
}

/// What an agent's certificate vouches for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertIdentity {
    /// The agent id: the node name of a `konnectivity-agent:<node>` CN, else
    /// the CN.
    pub name: String,
    /// The name plus every DNS and IP subject alternative name.
    hosts: BTreeSet<Host>,
}

/// Why an agent's certificate yields no identity.
#[derive(Debug, thiserror::Error)]
pub enum CertIdentityError {
    #[error("the certificate does not parse")]
    Parse(#[source] x509_parser::nom::Err<x509_parser::error::X509Error>),
    #[error("the certificate has no common name")]
    NoCommonName,
    #[error("common name {cn:?} names no node")]
    NoNode { cn: String },
    #[error("the subject alternative names do not parse")]
    San(#[source] x509_parser::error::X509Error),
}

impl CertIdentity {
    /// Reads the identity from a DER certificate (the TLS peer's leaf).
    pub fn from_der(der: &[u8]) -> Result<CertIdentity, CertIdentityError> {
        let (_, cert) = X509Certificate::from_der(der).map_err(CertIdentityError::Parse)?;
        let cn = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|a| a.as_str().ok())
            .ok_or(CertIdentityError::NoCommonName)?;
        let name = cn.strip_prefix(AGENT_CN_PREFIX).unwrap_or(cn).trim();
        if name.is_empty() {
            return Err(CertIdentityError::NoNode { cn: cn.to_string() });
        }
        let mut hosts = BTreeSet::from([Host::parse(name)]);
        if let Some(ext) = cert
            .subject_alternative_name()
            .map_err(CertIdentityError::San)?
        {
            for n in &ext.value.general_names {
                match n {
                    GeneralName::DNSName(d) => {
                        hosts.insert(Host::parse(d));
                    }
                    GeneralName::IPAddress(b) => {
                        if let Ok(v4) = <[u8; 4]>::try_from(*b) {
                            hosts.insert(Host::Ip(IpAddr::from(v4)));
                        } else if let Ok(v6) = <[u8; 16]>::try_from(*b) {
                            hosts.insert(Host::Ip(IpAddr::from(v6)));
                        }
                    }
                    _ => {}
                }
            }
        }
        Ok(CertIdentity {
            name: name.to_string(),
            hosts,
        })
    }

    /// What the certificate allows, for messages: `w1, 10.0.0.5`.
    pub fn allowed(&self) -> String {
        self.hosts
            .iter()
            .map(Host::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// An accepted agent under [`AgentIdentity::Certificate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bound {
    /// The id the agent is known by (from its certificate).
    pub agent_id: String,
    /// The `agentid` header, when it named someone else (ignored).
    pub ignored_header: Option<String>,
}

/// Why an agent was refused under [`AgentIdentity::Certificate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No usable client certificate (cannot happen on a listener that
    /// requires one, kept for safety).
    Certificate(String),
    /// An identifier names a host its certificate does not cover.
    Identifier {
        identity: String,
        claimed: String,
        allowed: String,
    },
}

impl Refusal {
    /// The `reason` label of the refusal metric.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Certificate(_) => "certificate",
            Refusal::Identifier { .. } => "identifiers",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Certificate(why) => write!(f, "agent certificate unusable: {why}"),
            Refusal::Identifier {
                identity,
                claimed,
                allowed,
            } => write!(
                f,
                "agent identifier {claimed} does not belong to the certificate of {identity} (it covers {allowed})"
            ),
        }
    }
}

/// Checks an agent's headers against its certificate (`der`, the TLS
/// peer's leaf).
pub fn bind(der: Option<&[u8]>, header_id: &str, ids: &Identifiers) -> Result<Bound, Refusal> {
    let der = der.ok_or_else(|| Refusal::Certificate("no client certificate".into()))?;
    let cert = CertIdentity::from_der(der)
        .map_err(|e| Refusal::Certificate(crate::telemetry::Chain(&e).to_string()))?;
    for h in &ids.hosts {
        if !cert.hosts.contains(&Host::parse(h)) {
            return Err(Refusal::Identifier {
                identity: cert.name.clone(),
                claimed: h.clone(),
                allowed: cert.allowed(),
            });
        }
    }
    let ignored_header = (header_id != cert.name).then(|| header_id.to_string());
    Ok(Bound {
        agent_id: cert.name,
        ignored_header,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(cn: &str, sans: &[&str]) -> Vec<u8> {
        let mut p =
            rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        let key = rcgen::KeyPair::generate().unwrap();
        p.self_signed(&key).unwrap().der().to_vec()
    }

    fn ids(s: &str) -> Identifiers {
        Identifiers::parse(s).unwrap()
    }

    #[test]
    fn the_certificate_names_the_agent_and_bounds_its_identifiers() {
        let w1 = cert("konnectivity-agent:w1", &["10.0.0.5", "fd00::5"]);
        // Its own node: name, addresses (IPv6 in any spelling).
        let b = bind(
            Some(&w1),
            "w1",
            &ids("host=10.0.0.5&ipv6=fd00:0::5&host=W1"),
        )
        .unwrap();
        assert_eq!(
            b,
            Bound {
                agent_id: "w1".into(),
                ignored_header: None
            }
        );
        // Another node's id in the header: the certificate's id is used.
        let b = bind(Some(&w1), "w2", &ids("host=10.0.0.5")).unwrap();
        assert_eq!(b.agent_id, "w1");
        assert_eq!(b.ignored_header.as_deref(), Some("w2"));
        // Another node's address or name: refused, naming what was claimed.
        for claim in ["host=10.0.0.6", "ipv4=10.0.0.6", "host=w2", "ipv6=fd00::6"] {
            let e = bind(Some(&w1), "w1", &ids(claim)).unwrap_err();
            assert_eq!(e.reason(), "identifiers", "{claim}");
            let msg = e.to_string();
            assert!(msg.contains("certificate of w1"), "{msg}");
            assert!(msg.contains("10.0.0.5"), "{msg}");
        }
        // cidr and default-route claim no node.
        assert!(bind(Some(&w1), "w1", &ids("cidr=10.0.0.0/8&default-route=true")).is_ok());
    }

    #[test]
    fn other_common_names_and_missing_certificates() {
        let c = cert("interop-agent", &[]);
        assert_eq!(
            bind(Some(&c), "x", &ids("")).unwrap().agent_id,
            "interop-agent"
        );
        assert!(bind(Some(&c), "x", &ids("host=127.0.0.1")).is_err());
        let e = bind(None, "x", &ids("")).unwrap_err();
        assert_eq!(e.reason(), "certificate");
        let empty = cert("konnectivity-agent:", &[]);
        assert_eq!(
            bind(Some(&empty), "x", &ids("")).unwrap_err().reason(),
            "certificate"
        );
        assert_eq!(
            "headers".parse::<AgentIdentity>().unwrap(),
            AgentIdentity::Headers
        );
        assert!("cert".parse::<AgentIdentity>().is_err());
    }
}
