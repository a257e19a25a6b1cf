//! One resource type's REST paths and the verbs mkectl uses on them.

use std::marker::PhantomData;

use bytes::Bytes;
use futures::Stream;
use http::Method;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ListMeta, ObjectMeta};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::client::Client;
use super::error::KubeError;
use super::watch::{watch_stream, WatchEvent};

/// Content type of a server-side apply (JSON is YAML).
const APPLY_PATCH: &str = "application/apply-patch+yaml";
const MERGE_PATCH: &str = "application/merge-patch+json";
const JSON: &str = "application/json";

/// A REST resource as discovery describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiResource {
    pub group: String,
    pub version: String,
    pub kind: String,
    /// The URL segment (`configmaps`).
    pub plural: String,
    pub namespaced: bool,
    /// Discovery's verbs (`get`, `list`, ...); empty when not discovered.
    pub verbs: Vec<String>,
}

impl ApiResource {
    /// The resource of a typed `k8s-openapi` object.
    pub fn of<K: k8s_openapi::Resource>() -> Self
    where
        K::Scope: 'static,
    {
        Self {
            group: K::GROUP.to_string(),
            version: K::VERSION.to_string(),
            kind: K::KIND.to_string(),
            plural: K::URL_PATH_SEGMENT.to_string(),
            namespaced: std::any::TypeId::of::<K::Scope>()
                == std::any::TypeId::of::<k8s_openapi::NamespaceResourceScope>(),
            verbs: Vec::new(),
        }
    }

    /// `/api/v1` or `/apis/<group>/<version>`.
    pub fn group_version_path(&self) -> String {
        group_version_path(&self.group, &self.version)
    }

    pub fn supports(&self, verb: &str) -> bool {
        self.verbs.iter().any(|v| v == verb)
    }
}

pub(crate) fn group_version_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("/api/{version}")
    } else {
        format!("/apis/{group}/{version}")
    }
}

/// An object whose type is only known at run time: its metadata typed, the
/// rest as JSON.
#[derive(Debug, Clone, Deserialize)]
pub struct DynamicObject {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(flatten)]
    pub data: serde_json::Value,
}

/// A list answer.
#[derive(Debug, Clone, Deserialize)]
pub struct ObjectList<K> {
    #[serde(default)]
    pub metadata: ListMeta,
    #[serde(default = "Vec::new")]
    pub items: Vec<K>,
}

/// Selectors of a list or watch.
#[derive(Debug, Clone, Default)]
pub struct ListParams {
    pub label_selector: Option<String>,
    pub field_selector: Option<String>,
}

impl ListParams {
    pub fn labels(mut self, selector: &str) -> Self {
        self.label_selector = Some(selector.to_string());
        self
    }

    pub fn fields(mut self, selector: &str) -> Self {
        self.field_selector = Some(selector.to_string());
        self
    }

    fn pairs(&self) -> Vec<(&'static str, &str)> {
        let mut pairs = Vec::new();
        if let Some(s) = &self.label_selector {
            pairs.push(("labelSelector", s.as_str()));
        }
        if let Some(s) = &self.field_selector {
            pairs.push(("fieldSelector", s.as_str()));
        }
        pairs
    }
}

/// The verbs on one resource, in one namespace or cluster-wide. `K` is what
/// answers decode into.
pub struct Api<K> {
    client: Client,
    /// `<group-version path>[/namespaces/<ns>]/<plural>`.
    collection: String,
    _k: PhantomData<fn() -> K>,
}

impl<K> Clone for Api<K> {
    fn clone(&self) -> Self {
        Self {
            client: self.client.clone(),
            collection: self.collection.clone(),
            _k: PhantomData,
        }
    }
}

impl<K: k8s_openapi::Resource<Scope = k8s_openapi::NamespaceResourceScope>> Api<K> {
    /// A typed namespaced resource in `namespace`.
    pub fn namespaced(client: Client, namespace: &str) -> Self {
        Self::new(client, &ApiResource::of::<K>(), Some(namespace))
    }
}

impl<K: k8s_openapi::Resource<Scope = k8s_openapi::ClusterResourceScope>> Api<K> {
    /// A typed cluster-scoped resource.
    pub fn cluster(client: Client) -> Self {
        Self::new(client, &ApiResource::of::<K>(), None)
    }
}

impl<K> Api<K> {
    /// Any resource: `namespace` for a namespaced one (None lists across
    /// every namespace, or addresses a cluster-scoped resource).
    pub fn new(client: Client, resource: &ApiResource, namespace: Option<&str>) -> Self {
        let mut collection = resource.group_version_path();
        if let Some(ns) = namespace.filter(|_| resource.namespaced) {
            collection.push_str("/namespaces/");
            collection.push_str(&segment(ns));
        }
        collection.push('/');
        collection.push_str(&resource.plural);
        Self {
            client,
            collection,
            _k: PhantomData,
        }
    }

    fn item(&self, name: &str) -> String {
        format!("{}/{}", self.collection, segment(name))
    }
}

impl<K: DeserializeOwned> Api<K> {
    pub async fn get(&self, name: &str) -> Result<K, KubeError> {
        self.client
            .call(Method::GET, &self.item(name), None, Bytes::new())
            .await
    }

    /// `None` when the object does not exist.
    pub async fn get_opt(&self, name: &str) -> Result<Option<K>, KubeError> {
        match self.get(name).await {
            Ok(o) => Ok(Some(o)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub async fn create<B: Serialize>(&self, obj: &B) -> Result<K, KubeError> {
        let body = encode(&self.collection, obj)?;
        self.client
            .call(Method::POST, &self.collection, Some(JSON), body)
            .await
    }

    /// PUT: a compare-and-swap when `obj` carries a resourceVersion.
    pub async fn replace<B: Serialize>(&self, name: &str, obj: &B) -> Result<K, KubeError> {
        let path = self.item(name);
        let body = encode(&path, obj)?;
        self.client.call(Method::PUT, &path, Some(JSON), body).await
    }

    /// Server-side apply as `field_manager`, taking over conflicting fields
    /// when `force`.
    pub async fn apply<B: Serialize>(
        &self,
        name: &str,
        field_manager: &str,
        force: bool,
        obj: &B,
    ) -> Result<K, KubeError> {
        let mut pairs = vec![("fieldManager", field_manager)];
        if force {
            pairs.push(("force", "true"));
        }
        let path = format!("{}?{}", self.item(name), query(&pairs));
        let body = encode(&path, obj)?;
        self.client
            .call(Method::PATCH, &path, Some(APPLY_PATCH), body)
            .await
    }

    /// JSON merge patch of `name` or of its `subresource` (`status`,
    /// `approval`).
    pub async fn merge_patch<B: Serialize>(
        &self,
        name: &str,
        subresource: Option<&str>,
        patch: &B,
    ) -> Result<K, KubeError> {
        let mut path = self.item(name);
        if let Some(sub) = subresource {
            path.push('/');
            path.push_str(sub);
        }
        let body = encode(&path, patch)?;
        self.client
            .call(Method::PATCH, &path, Some(MERGE_PATCH), body)
            .await
    }

    pub async fn list(&self, params: &ListParams) -> Result<ObjectList<K>, KubeError> {
        let query = query(&params.pairs());
        let path = if query.is_empty() {
            self.collection.clone()
        } else {
            format!("{}?{query}", self.collection)
        };
        self.client
            .call(Method::GET, &path, None, Bytes::new())
            .await
    }

    /// Watches from `resource_version`; the server ends the stream after
    /// `timeout_secs`.
    pub async fn watch(
        &self,
        params: &ListParams,
        resource_version: &str,
        timeout_secs: u32,
    ) -> Result<impl Stream<Item = Result<WatchEvent<K>, KubeError>>, KubeError> {
        let timeout = timeout_secs.to_string();
        let mut pairs = vec![
            ("watch", "true"),
            ("resourceVersion", resource_version),
            ("timeoutSeconds", timeout.as_str()),
            ("allowWatchBookmarks", "true"),
        ];
        pairs.extend(params.pairs());
        let path = format!("{}?{}", self.collection, query(&pairs));
        let resp = self
            .client
            .send(Method::GET, &path, None, Bytes::new())
            .await?;
        Ok(watch_stream(format!("GET {path}"), resp.into_body()))
    }
}

impl<K> Api<K> {
    /// Deletes `name`; dependents are collected in the background.
    pub async fn delete(&self, name: &str) -> Result<(), KubeError> {
        let path = self.item(name);
        let body = encode(
            &path,
            &serde_json::json!({
                "apiVersion": "v1",
                "kind": "DeleteOptions",
                "propagationPolicy": "Background",
            }),
        )?;
        self.client
            .call::<serde::de::IgnoredAny>(Method::DELETE, &path, Some(JSON), body)
            .await
            .map(|_| ())
    }
}

/// A URL query from `pairs`, each percent-encoded.
fn query(pairs: &[(&str, &str)]) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

fn encode<B: Serialize>(path: &str, obj: &B) -> Result<Bytes, KubeError> {
    serde_json::to_vec(obj)
        .map(Bytes::from)
        .map_err(|source| KubeError::Encode {
            call: path.to_string(),
            source,
        })
}

/// Percent-encodes one path segment (object and namespace names are DNS
/// names already; anything else must not change the path).
fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b':' | b'@') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
    use k8s_openapi::api::core::v1::ConfigMap;

    fn client() -> Client {
        Client::new(super::super::ClientConfig::plain("http://127.0.0.1:1")).unwrap()
    }

    #[test]
    fn paths_follow_group_scope_and_namespace() {
        let cm: Api<ConfigMap> = Api::namespaced(client(), "kube-system");
        assert_eq!(cm.item("a"), "/api/v1/namespaces/kube-system/configmaps/a");
        let csr: Api<CertificateSigningRequest> = Api::cluster(client());
        assert_eq!(
            csr.item("x"),
            "/apis/certificates.k8s.io/v1/certificatesigningrequests/x"
        );
        let ar = ApiResource::of::<ConfigMap>();
        assert!(ar.namespaced);
        assert!(!ApiResource::of::<CertificateSigningRequest>().namespaced);
        let all: Api<DynamicObject> = Api::new(client(), &ar, None);
        assert_eq!(all.collection, "/api/v1/configmaps");
        assert_eq!(
            cm.item("a/../b"),
            "/api/v1/namespaces/kube-system/configmaps/a%2F..%2Fb"
        );
    }
}
