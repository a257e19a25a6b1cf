//! Which REST resource serves a kind: the apiserver's discovery documents
//! (`/api/v1`, `/apis/<group>`, `/apis/<group>/<version>`).

use bytes::Bytes;
use http::Method;
use serde::Deserialize;

use super::api::{group_version_path, ApiResource};
use super::client::Client;
use super::error::KubeError;

#[derive(Deserialize)]
struct ResourceList {
    #[serde(default)]
    resources: Vec<ResourceEntry>,
}

#[derive(Deserialize)]
struct ResourceEntry {
    name: String,
    kind: String,
    #[serde(default)]
    namespaced: bool,
    #[serde(default)]
    verbs: Vec<String>,
}

#[derive(Deserialize)]
struct Group {
    #[serde(default)]
    versions: Vec<GroupVersion>,
    #[serde(rename = "preferredVersion")]
    preferred: Option<GroupVersion>,
}

#[derive(Deserialize)]
struct GroupVersion {
    version: String,
}

/// The collections (no subresources) served at `group/version`; `None` when
/// the apiserver does not serve that version (yet: a new CRD takes a moment).
async fn resources(
    client: &Client,
    group: &str,
    version: &str,
) -> Result<Option<Vec<ApiResource>>, KubeError> {
    let path = group_version_path(group, version);
    let list: ResourceList = match client.call(Method::GET, &path, None, Bytes::new()).await {
        Ok(l) => l,
        // 503: an aggregated API whose backend is not there yet.
        Err(e) if matches!(e.code(), Some(404 | 503)) => return Ok(None),
        Err(e) => return Err(e),
    };
    Ok(Some(
        list.resources
            .into_iter()
            // "deployments/status": a subresource, not the kind's collection.
            .filter(|r| !r.name.contains('/'))
            .map(|r| ApiResource {
                group: group.to_string(),
                version: version.to_string(),
                kind: r.kind,
                plural: r.name,
                namespaced: r.namespaced,
                verbs: r.verbs,
            })
            .collect(),
    ))
}

/// The resource serving `kind` at exactly `group/version`; `None` when the
/// apiserver does not serve it (yet: a new CRD takes a moment).
pub async fn pinned_kind(
    client: &Client,
    group: &str,
    version: &str,
    kind: &str,
) -> Result<Option<ApiResource>, KubeError> {
    Ok(resources(client, group, version)
        .await?
        .and_then(|rs| rs.into_iter().find(|r| r.kind == kind)))
}

/// Every collection of one API group, the preferred version's first: read
/// once, then asked for any number of kinds.
#[derive(Debug, Clone)]
pub struct ApiGroup {
    resources: Vec<ApiResource>,
}

impl ApiGroup {
    /// The resource serving `kind` at the group's preferred version, or else
    /// at the first other version that serves it.
    pub fn recommended_kind(&self, kind: &str) -> Option<&ApiResource> {
        self.resources.iter().find(|r| r.kind == kind)
    }
}

/// Reads the discovery of `group` (`""` is the core group); `None` when the
/// apiserver does not serve the group (e.g. its last CRD was deleted).
pub async fn group(client: &Client, group: &str) -> Result<Option<ApiGroup>, KubeError> {
    let versions = if group.is_empty() {
        vec!["v1".to_string()]
    } else {
        let path = format!("/apis/{group}");
        let g: Group = match client.call(Method::GET, &path, None, Bytes::new()).await {
            Ok(g) => g,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut versions: Vec<String> = g.preferred.map(|p| p.version).into_iter().collect();
        for v in g.versions {
            if !versions.contains(&v.version) {
                versions.push(v.version);
            }
        }
        versions
    };
    let mut all = Vec::new();
    for v in versions {
        all.extend(resources(client, group, &v).await?.unwrap_or_default());
    }
    Ok(Some(ApiGroup { resources: all }))
}
