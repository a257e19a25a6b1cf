//! `mkectl token create|list|invalidate`: acts on the running local
//! controller through its etcd (127.0.0.1, the apiserver's etcd client
//! certificate from the data dir's PKI). Exit 69 when that etcd does not
//! answer.

use std::time::Duration;

use serde::Serialize;

use crate::cli::{GlobalArgs, OutputFormat, TokenCommand, TokenRole};
use crate::config::{ClusterConfig, NodePaths};
use crate::etcd::{self, EtcdClientTls};
use crate::exit::{UnavailableError, UsageError};
use crate::join::store::{self, TokenStore};
use crate::join::token::unix_now;
use crate::join::{registry, JoinToken, Role, StoredToken};
use crate::node::url_for;
use crate::pki::{self, PkiPaths};

/// Bound on reaching the local etcd.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub async fn run(global: &GlobalArgs, cmd: &TokenCommand) -> anyhow::Result<()> {
    let cfg = super::shared::load_config(global.config.as_deref())?;
    let paths = NodePaths::new(&global.data_dir, &global.run_dir, global.bin_dir.as_deref());
    let pki = PkiPaths::new(&paths.pki_dir());
    let mut client = local_etcd(&cfg, &pki).await?;
    let tokens = TokenStore::new(client.clone());
    match cmd {
        TokenCommand::Create {
            role,
            expiry,
            description,
        } => {
            let role = match role {
                TokenRole::Worker => Role::Worker,
                TokenRole::Controller => Role::Controller,
            };
            let ttl = (!expiry.is_zero()).then_some(*expiry);
            if ttl.is_some_and(|d| d < Duration::from_secs(1)) {
                return Err(
                    UsageError("--expiry must be at least 1s (or 0 for none)".into()).into(),
                );
            }
            let mut endpoints: Vec<String> = registry::list(&mut client)
                .await?
                .into_iter()
                .map(|r| r.join_api)
                .collect();
            if endpoints.is_empty() {
                let node =
                    cfg.node_address(&crate::config::display_name(global.config.as_deref()))?;
                endpoints.push(url_for(node, cfg.exposed_join_port()));
            }
            let ca_pin = pki::spki_sha256(&crate::fsutil::read(&pki.ca.cert)?)?;
            let (bootstrap, stored) =
                tokens
                    .create(role, ttl, description)
                    .await
                    .map_err(|e| match e {
                        crate::join::JoinError::Conflict(m) => UsageError(m).into(),
                        other => anyhow::Error::new(other),
                    })?;
            let token = JoinToken {
                endpoints,
                ca_pin,
                role,
                bootstrap,
            };
            tracing::info!(token_id = %stored.id, %role, expires = ?stored.expires, "created join token");
            println!("{}", token.encode());
        }
        TokenCommand::List { output } => {
            let list = tokens.list().await?;
            print_list(&list, *output)?;
        }
        TokenCommand::Invalidate { ids } => {
            let mut missing = Vec::new();
            for id in ids {
                if id.len() != 6
                    || !id
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
                {
                    return Err(UsageError(format!(
                        "{id:?} is not a token id (6 characters [a-z0-9], the part before the dot)"
                    ))
                    .into());
                }
                if tokens.invalidate(id).await? {
                    println!("token {id} invalidated");
                } else {
                    missing.push(id.as_str());
                }
            }
            if !missing.is_empty() {
                anyhow::bail!("no such token: {}", missing.join(", "));
            }
        }
    }
    Ok(())
}

/// Connects to this node's etcd and checks it answers (exit 69 if not).
async fn local_etcd(cfg: &ClusterConfig, pki: &PkiPaths) -> anyhow::Result<etcd_client::Client> {
    let endpoint = crate::etcd::local_url(cfg.spec.etcd.client_port);
    let tls = EtcdClientTls::apiserver(pki);
    if !tls.cert.exists() {
        return Err(UnavailableError(format!(
            "no controller PKI under {} ({} missing): run `mkectl token` on a controller, with its --data-dir",
            pki.dir.display(),
            tls.cert.display()
        ))
        .into());
    }
    let unavailable = |e: String| {
        UnavailableError(format!(
            "cannot reach the local controller's etcd at {endpoint}: {e}; is `mkectl controller` running?"
        ))
    };
    let mut client = etcd::connect(&endpoint, &tls)
        .await
        .map_err(|e| unavailable(crate::telemetry::Chain(&e).to_string()))?;
    match tokio::time::timeout(CONNECT_TIMEOUT, client.status()).await {
        Ok(Ok(_)) => Ok(client),
        Ok(Err(e)) => Err(unavailable(e.to_string()).into()),
        Err(_) => Err(unavailable("timed out".into()).into()),
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TokenView<'a> {
    id: &'a str,
    role: Role,
    status: &'static str,
    created: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    expires: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    invalidated: Option<String>,
    description: &'a str,
}

fn rfc3339(secs: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

fn print_list(list: &[StoredToken], output: OutputFormat) -> anyhow::Result<()> {
    let now = unix_now();
    let views: Vec<TokenView<'_>> = list
        .iter()
        .map(|t| TokenView {
            id: &t.id,
            role: t.role,
            status: store::status(t, now),
            created: rfc3339(t.created),
            expires: t.expires.map(rfc3339),
            invalidated: t.invalidated.map(rfc3339),
            description: &t.description,
        })
        .collect();
    match output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&views)?),
        OutputFormat::Yaml => print!("{}", serde_saphyr::to_string(&views)?),
        OutputFormat::Text => {
            println!(
                "{:<8} {:<11} {:<12} {:<21} DESCRIPTION",
                "ID", "ROLE", "STATUS", "EXPIRES"
            );
            for v in &views {
                println!(
                    "{:<8} {:<11} {:<12} {:<21} {}",
                    v.id,
                    v.role.to_string(),
                    v.status,
                    v.expires.as_deref().unwrap_or("never"),
                    v.description
                );
            }
        }
    }
    Ok(())
}
