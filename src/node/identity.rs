//! Who and where this node is, resolved once at start for both roles: the
//! node name, the node address and absolute paths.

use std::net::IpAddr;
use std::path::Path;

use super::NodeError;
use crate::config::NodePaths;

/// The default node name (lowercased hostname), shared with the commands
/// that must agree with the controller on it (`restore`, `certs renew`).
pub fn hostname() -> Result<String, NodeError> {
    let h = nix::unistd::gethostname().map_err(NodeError::Hostname)?;
    Ok(h.to_string_lossy().to_lowercase())
}

/// `name`, else the hostname.
pub fn node_name(name: Option<&str>) -> Result<String, NodeError> {
    match name {
        Some(n) => Ok(n.to_string()),
        None => hostname(),
    }
}

/// The node's paths made absolute, so the paths in component flags and
/// files mean the same thing whatever directory a child runs in (etcd runs
/// in its data dir).
pub fn absolute_paths(
    data_dir: &Path,
    run_dir: &Path,
    bin_dir: Option<&Path>,
) -> Result<NodePaths, NodeError> {
    let abs = |p: &Path| {
        std::path::absolute(p).map_err(|source| NodeError::Path {
            path: p.to_path_buf(),
            source,
        })
    };
    let bin_dir = bin_dir.map(abs).transpose()?;
    Ok(NodePaths::new(
        &abs(data_dir)?,
        &abs(run_dir)?,
        bin_dir.as_deref(),
    ))
}

/// `https://addr:port`, brackets for IPv6.
pub fn url_for(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(a) => format!("https://{a}:{port}"),
        IpAddr::V6(a) => format!("https://[{a}]:{port}"),
    }
}
