//! The kube-apiserver `EgressSelectorConfiguration` that routes the
//! `cluster` selection (apiserver → nodes, pods, services) through our
//! server's gRPC UDS.

use std::path::Path;

use serde::Serialize;

use super::KonnectivityError;
use crate::fsutil;

/// API version written; understood by every supported kube-apiserver.
pub const EGRESS_API_VERSION: &str = "apiserver.k8s.io/v1beta1";

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct EgressSelectorConfiguration {
    api_version: &'static str,
    kind: &'static str,
    egress_selections: Vec<EgressSelection>,
}

#[derive(Debug, Serialize)]
struct EgressSelection {
    name: &'static str,
    connection: Connection,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Connection {
    proxy_protocol: &'static str,
    transport: Transport,
}

#[derive(Debug, Serialize)]
struct Transport {
    uds: Uds,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Uds {
    uds_name: String,
}

/// YAML for kube-apiserver's `--egress-selector-config-file`: selection
/// `cluster` over GRPC on `uds_path` (no `unix://` prefix, as upstream wants).
pub fn egress_selector_config(uds_path: &Path) -> Result<String, KonnectivityError> {
    let cfg = EgressSelectorConfiguration {
        api_version: EGRESS_API_VERSION,
        kind: "EgressSelectorConfiguration",
        egress_selections: vec![EgressSelection {
            name: "cluster",
            connection: Connection {
                proxy_protocol: "GRPC",
                transport: Transport {
                    uds: Uds {
                        uds_name: uds_path.display().to_string(),
                    },
                },
            },
        }],
    };
    serde_saphyr::to_string(&cfg).map_err(|e| KonnectivityError::Yaml(e.to_string()))
}

/// Writes [`egress_selector_config`] atomically (0644); returns whether the
/// file changed.
pub fn write_egress_selector_config(
    path: &Path,
    uds_path: &Path,
) -> Result<bool, KonnectivityError> {
    let yaml = egress_selector_config(uds_path)?;
    Ok(fsutil::write_atomic(
        path,
        yaml.as_bytes(),
        fsutil::PUBLIC_FILE_MODE,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn egress_config_round_trips_with_upstream_field_names() {
        let yaml = egress_selector_config(Path::new("/run/mke/konnectivity.sock")).unwrap();
        let v: serde_json::Value = serde_saphyr::from_str(&yaml).unwrap();
        assert_eq!(v["apiVersion"], "apiserver.k8s.io/v1beta1");
        assert_eq!(v["kind"], "EgressSelectorConfiguration");
        let sel = &v["egressSelections"][0];
        assert_eq!(sel["name"], "cluster");
        assert_eq!(sel["connection"]["proxyProtocol"], "GRPC");
        assert_eq!(
            sel["connection"]["transport"]["uds"]["udsName"],
            "/run/mke/konnectivity.sock"
        );
    }

    #[test]
    fn write_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("egress.yaml");
        assert!(write_egress_selector_config(&p, Path::new("/x.sock")).unwrap());
        assert!(!write_egress_selector_config(&p, Path::new("/x.sock")).unwrap());
    }
}
