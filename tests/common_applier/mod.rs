//! A stateful Kubernetes API emulation over real HTTP on 127.0.0.1, for the
//! applier tests.
//!
//! Why our own: the third-party `kmock` emulator (PyPI) was evaluated first;
//! its stateful mode treats PATCH as a plain dict merge that 404s on a missing
//! object (no create-on-apply, no server-side apply), ignores
//! `labelSelector`, has no resourceVersion conflicts and does not serve CRDs
//! it stores as new resources. Those are exactly the behaviours the applier
//! depends on, so this fake implements them the way the apiserver does:
//!
//! - discovery: `/api`, `/api/v1`, `/apis`, `/apis/<g>`, `/apis/<g>/<v>`, built
//!   from the built-in types plus every Established CRD;
//! - objects: GET/LIST (with `labelSelector`: `k=v`, `k!=v`, `k`, `!k`),
//!   POST (409 AlreadyExists), PUT (409 Conflict on a stale
//!   resourceVersion), DELETE (namespaces cascade to their objects, CRDs to
//!   their custom resources), list items without apiVersion/kind as the
//!   apiserver sends them;
//! - server-side apply (`PATCH` with `application/apply-patch+yaml`):
//!   requires `fieldManager`, creates missing objects, checks apiVersion,
//!   kind and name against the URL, 404s a namespaced object whose namespace
//!   does not exist, 422s invalid names; merges per field manager (top-level
//!   fields the manager applied before and dropped now are removed; labels
//!   and annotations merged key by key), records `managedFields`, bumps
//!   resourceVersion only on change;
//! - CRDs become Established (status condition + discovery) after a
//!   configurable delay, like the real apiextensions controller.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::{json, Map, Value};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, PartialEq)]
pub struct ResType {
    pub group: String,
    pub version: String,
    pub kind: String,
    pub plural: String,
    pub namespaced: bool,
    /// Name of the CRD that defines it, for custom resources.
    pub crd: Option<String>,
}

impl ResType {
    fn gv(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
}

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Req {
    pub method: String,
    pub path: String,
    pub query: String,
    pub content_type: String,
    /// HTTP status of the answer.
    pub status: u16,
}

struct Stored {
    obj: Value,
    /// Last applied configuration per field manager.
    applied: BTreeMap<String, Value>,
}

type Key = (String, String, String, String); // group, plural, namespace ("" = cluster), name

struct Inner {
    types: Vec<ResType>,
    objects: BTreeMap<Key, Stored>,
    rv: u64,
    log: Vec<Req>,
    crd_delay: Duration,
}

pub struct FakeKube {
    pub addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
    stop: CancellationToken,
}

impl Drop for FakeKube {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn builtin_types() -> Vec<ResType> {
    let t = |g: &str, v: &str, k: &str, p: &str, ns: bool| ResType {
        group: g.into(),
        version: v.into(),
        kind: k.into(),
        plural: p.into(),
        namespaced: ns,
        crd: None,
    };
    vec![
        t("", "v1", "Namespace", "namespaces", false),
        t("", "v1", "ConfigMap", "configmaps", true),
        t("", "v1", "Secret", "secrets", true),
        t("", "v1", "Service", "services", true),
        t("", "v1", "ServiceAccount", "serviceaccounts", true),
        t("", "v1", "Pod", "pods", true),
        t("apps", "v1", "Deployment", "deployments", true),
        t("apps", "v1", "DaemonSet", "daemonsets", true),
        t("apps", "v1", "StatefulSet", "statefulsets", true),
        t(
            "rbac.authorization.k8s.io",
            "v1",
            "ClusterRole",
            "clusterroles",
            false,
        ),
        t(
            "rbac.authorization.k8s.io",
            "v1",
            "ClusterRoleBinding",
            "clusterrolebindings",
            false,
        ),
        t("rbac.authorization.k8s.io", "v1", "Role", "roles", true),
        t(
            "rbac.authorization.k8s.io",
            "v1",
            "RoleBinding",
            "rolebindings",
            true,
        ),
        t("coordination.k8s.io", "v1", "Lease", "leases", true),
        t(
            "policy",
            "v1",
            "PodDisruptionBudget",
            "poddisruptionbudgets",
            true,
        ),
        t(
            "apiextensions.k8s.io",
            "v1",
            "CustomResourceDefinition",
            "customresourcedefinitions",
            false,
        ),
    ]
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

impl FakeKube {
    /// Starts the server with the namespaces a fresh apiserver has.
    pub async fn start() -> FakeKube {
        let inner = Arc::new(Mutex::new(Inner {
            types: builtin_types(),
            objects: BTreeMap::new(),
            rv: 100,
            log: Vec::new(),
            crd_delay: Duration::from_millis(300),
        }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let app = Router::new().fallback(handle).with_state(inner.clone());
        let s = stop.clone();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { s.cancelled().await })
                .await
                .unwrap();
        });
        let fake = FakeKube { addr, inner, stop };
        for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            fake.insert(
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
                "kube-apiserver",
            );
        }
        fake
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn client(&self) -> mkectl::kubeapi::Client {
        mkectl::kubeapi::Client::new(mkectl::kubeapi::ClientConfig::plain(self.url())).unwrap()
    }

    pub fn set_crd_delay(&self, d: Duration) {
        self.inner.lock().unwrap().crd_delay = d;
    }

    /// The stored object, if any (`ns` None for cluster-scoped).
    pub fn get(&self, group: &str, plural: &str, ns: Option<&str>, name: &str) -> Option<Value> {
        let g = self.inner.lock().unwrap();
        g.objects
            .get(&(
                group.into(),
                plural.into(),
                ns.unwrap_or("").into(),
                name.into(),
            ))
            .map(|s| s.obj.clone())
    }

    /// Every stored object of a type, across namespaces.
    pub fn list(&self, group: &str, plural: &str) -> Vec<Value> {
        let g = self.inner.lock().unwrap();
        g.objects
            .iter()
            .filter(|(k, _)| k.0 == group && k.1 == plural)
            .map(|(_, s)| s.obj.clone())
            .collect()
    }

    pub fn serves(&self, group: &str, plural: &str) -> bool {
        let g = self.inner.lock().unwrap();
        g.types
            .iter()
            .any(|t| t.group == group && t.plural == plural)
    }

    /// Stores an object as if `manager` had created it (not through apply).
    pub fn insert(&self, obj: Value, manager: &str) {
        let mut g = self.inner.lock().unwrap();
        let api_version = obj["apiVersion"].as_str().unwrap().to_string();
        let kind = obj["kind"].as_str().unwrap().to_string();
        let (group, version) = match api_version.rsplit_once('/') {
            Some((g, v)) => (g.to_string(), v.to_string()),
            None => (String::new(), api_version.clone()),
        };
        let t = g
            .types
            .iter()
            .find(|t| t.group == group && t.version == version && t.kind == kind)
            .cloned()
            .unwrap_or_else(|| panic!("fake does not serve {api_version} {kind}"));
        let ns = obj["metadata"]["namespace"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let name = obj["metadata"]["name"].as_str().unwrap().to_string();
        let mut obj = obj;
        g.rv += 1;
        let rv = g.rv;
        stamp_new(&mut obj, rv, manager, "Update", &t.gv());
        g.objects.insert(
            (t.group.clone(), t.plural.clone(), ns, name),
            Stored {
                obj,
                applied: BTreeMap::new(),
            },
        );
    }

    pub fn requests(&self) -> Vec<Req> {
        self.inner.lock().unwrap().log.clone()
    }

    pub fn clear_requests(&self) {
        self.inner.lock().unwrap().log.clear();
    }
}

fn stamp_new(obj: &mut Value, rv: u64, manager: &str, operation: &str, api_version: &str) {
    let meta = obj
        .as_object_mut()
        .unwrap()
        .entry("metadata")
        .or_insert_with(|| json!({}));
    let m = meta.as_object_mut().unwrap();
    m.insert("uid".into(), json!(format!("uid-{rv}")));
    m.insert("resourceVersion".into(), json!(rv.to_string()));
    m.insert("creationTimestamp".into(), json!(now_rfc3339()));
    m.insert("generation".into(), json!(1));
    m.insert(
        "managedFields".into(),
        json!([{"manager": manager, "operation": operation, "apiVersion": api_version,
                "fieldsType": "FieldsV1", "fieldsV1": {}, "time": now_rfc3339()}]),
    );
}

fn status(code: u16, reason: &str, message: String) -> Response {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code,
    });
    (
        StatusCode::from_u16(code).unwrap(),
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn ok_json(code: u16, v: &Value) -> Response {
    (
        StatusCode::from_u16(code).unwrap(),
        [("content-type", "application/json")],
        v.to_string(),
    )
        .into_response()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let h = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(h, 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query_map(q: &str) -> BTreeMap<String, String> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (percent_decode(k), percent_decode(v)),
            None => (percent_decode(p), String::new()),
        })
        .collect()
}

/// Equality-based label selectors: `k=v`, `k==v`, `k!=v`, `k`, `!k`.
fn selector_matches(sel: &str, labels: &Map<String, Value>) -> bool {
    sel.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .all(|term| {
            if let Some((k, v)) = term.split_once("!=") {
                labels.get(k.trim()).and_then(Value::as_str) != Some(v.trim())
            } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                labels.get(k.trim()).and_then(Value::as_str) == Some(v.trim())
            } else if let Some(k) = term.strip_prefix('!') {
                !labels.contains_key(k.trim())
            } else {
                labels.contains_key(term)
            }
        })
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// RBAC object names may contain ':' (system:coredns); everything else is a DNS subdomain.
fn valid_name_for(t: &ResType, name: &str) -> bool {
    if t.group == "rbac.authorization.k8s.io" {
        !name.is_empty() && !name.contains('/') && !name.contains('%')
    } else {
        valid_name(name)
    }
}

enum Route {
    CoreVersions,
    Groups,
    Group(String),
    Resources(String, String),
    Collection {
        group: String,
        version: String,
        plural: String,
        ns: Option<String>,
    },
    Object {
        group: String,
        version: String,
        plural: String,
        ns: Option<String>,
        name: String,
    },
    Unknown,
}

fn route(path: &str) -> Route {
    let segs: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api"] => return Route::CoreVersions,
        ["apis"] => return Route::Groups,
        ["apis", g] => return Route::Group(g.to_string()),
        ["api", v, rest @ ..] => (String::new(), v.to_string(), rest),
        ["apis", g, v, rest @ ..] => (g.to_string(), v.to_string(), rest),
        _ => return Route::Unknown,
    };
    let s = |x: &&str| x.to_string();
    match rest {
        [] => Route::Resources(group, version),
        [p] => Route::Collection {
            group,
            version,
            plural: s(p),
            ns: None,
        },
        ["namespaces", ns, p] => Route::Collection {
            group,
            version,
            plural: s(p),
            ns: Some(s(ns)),
        },
        ["namespaces", ns, p, n] => Route::Object {
            group,
            version,
            plural: s(p),
            ns: Some(s(ns)),
            name: s(n),
        },
        [p, n] => Route::Object {
            group,
            version,
            plural: s(p),
            ns: None,
            name: s(n),
        },
        _ => Route::Unknown,
    }
}

async fn handle(
    State(inner): State<Arc<Mutex<Inner>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let mut g = inner.lock().unwrap();
    let resp = serve(&mut g, &inner, &method, &uri, &content_type, &body);
    g.log.push(Req {
        method: method.to_string(),
        path: uri.path().to_string(),
        query: uri.query().unwrap_or("").to_string(),
        content_type,
        status: resp.status().as_u16(),
    });
    resp
}

fn serve(
    g: &mut Inner,
    inner: &Arc<Mutex<Inner>>,
    method: &Method,
    uri: &Uri,
    content_type: &str,
    body: &[u8],
) -> Response {
    let path = uri.path().to_string();
    let q = query_map(uri.query().unwrap_or(""));
    match route(&path) {
        Route::CoreVersions if method == Method::GET => ok_json(
            200,
            &json!({"kind": "APIVersions", "versions": ["v1"],
                    "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1:6443"}]}),
        ),
        Route::Groups if method == Method::GET => {
            let groups: Vec<Value> = group_names(&g.types)
                .iter()
                .map(|n| group_json(&g.types, n))
                .collect();
            ok_json(
                200,
                &json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}),
            )
        }
        Route::Group(name) if method == Method::GET => {
            if group_names(&g.types).contains(&name) {
                let mut v = group_json(&g.types, &name);
                v["kind"] = json!("APIGroup");
                v["apiVersion"] = json!("v1");
                ok_json(200, &v)
            } else {
                status(
                    404,
                    "NotFound",
                    "the server could not find the requested resource".into(),
                )
            }
        }
        Route::Resources(group, version) if method == Method::GET => {
            let res: Vec<Value> = g
                .types
                .iter()
                .filter(|t| t.group == group && t.version == version)
                .map(|t| {
                    json!({"name": t.plural, "singularName": t.kind.to_lowercase(), "namespaced": t.namespaced,
                           "kind": t.kind,
                           "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]})
                })
                .collect();
            if res.is_empty() {
                return status(
                    404,
                    "NotFound",
                    "the server could not find the requested resource".into(),
                );
            }
            let gv = if group.is_empty() {
                version.clone()
            } else {
                format!("{group}/{version}")
            };
            ok_json(
                200,
                &json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": res}),
            )
        }
        Route::Collection {
            group,
            version,
            plural,
            ns,
        } => {
            let Some(t) = find_type(&g.types, &group, &version, &plural) else {
                return status(
                    404,
                    "NotFound",
                    "the server could not find the requested resource".into(),
                );
            };
            if !t.namespaced && ns.is_some() {
                return status(
                    404,
                    "NotFound",
                    "the server could not find the requested resource".into(),
                );
            }
            match *method {
                Method::GET => list(
                    g,
                    &t,
                    ns.as_deref(),
                    q.get("labelSelector").map(String::as_str),
                ),
                Method::POST => {
                    let Ok(obj) = serde_json::from_slice::<Value>(body) else {
                        return status(400, "BadRequest", "body is not JSON".into());
                    };
                    let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
                    let manager = q
                        .get("fieldManager")
                        .cloned()
                        .unwrap_or_else(|| "unknown".into());
                    create(g, &t, ns, &name, obj, &manager, "Update", inner.clone())
                }
                _ => status(405, "MethodNotAllowed", "method not allowed".into()),
            }
        }
        Route::Object {
            group,
            version,
            plural,
            ns,
            name,
        } => {
            let Some(t) = find_type(&g.types, &group, &version, &plural) else {
                return status(
                    404,
                    "NotFound",
                    "the server could not find the requested resource".into(),
                );
            };
            if t.namespaced != ns.is_some() {
                return status(
                    404,
                    "NotFound",
                    "the server could not find the requested resource".into(),
                );
            }
            let key: Key = (
                t.group.clone(),
                t.plural.clone(),
                ns.clone().unwrap_or_default(),
                name.clone(),
            );
            match *method {
                Method::GET => match g.objects.get(&key) {
                    Some(s) => ok_json(200, &s.obj),
                    None => not_found(&t, &name),
                },
                Method::PUT => {
                    let Ok(mut obj) = serde_json::from_slice::<Value>(body) else {
                        return status(400, "BadRequest", "body is not JSON".into());
                    };
                    let Some(cur) = g.objects.get(&key).map(|s| s.obj.clone()) else {
                        return not_found(&t, &name);
                    };
                    let cur_rv = cur["metadata"]["resourceVersion"].clone();
                    let sent_rv = obj["metadata"]["resourceVersion"].clone();
                    if !sent_rv.is_null() && sent_rv != cur_rv {
                        return status(
                            409,
                            "Conflict",
                            format!("Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again", t.plural),
                        );
                    }
                    g.rv += 1;
                    let rv = g.rv;
                    for f in ["uid", "creationTimestamp", "managedFields", "generation"] {
                        obj["metadata"][f] = cur["metadata"][f].clone();
                    }
                    obj["metadata"]["resourceVersion"] = json!(rv.to_string());
                    if let Some(ns) = &ns {
                        obj["metadata"]["namespace"] = json!(ns);
                    }
                    g.objects.get_mut(&key).unwrap().obj = obj.clone();
                    ok_json(200, &obj)
                }
                Method::PATCH => {
                    if !content_type.starts_with("application/apply-patch+yaml") {
                        return status(
                            415,
                            "UnsupportedMediaType",
                            format!("this fake only serves server-side apply, not {content_type}"),
                        );
                    }
                    let Some(manager) = q.get("fieldManager").cloned().filter(|m| !m.is_empty())
                    else {
                        return status(400, "BadRequest", "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch".into());
                    };
                    let text = String::from_utf8_lossy(body).into_owned();
                    let obj: Value = match serde_json::from_str(&text) {
                        Ok(v) => v,
                        Err(_) => match serde_saphyr::from_str(&text) {
                            Ok(v) => v,
                            Err(e) => {
                                return status(
                                    400,
                                    "BadRequest",
                                    format!("error decoding YAML: {e}"),
                                )
                            }
                        },
                    };
                    if obj["apiVersion"].as_str() != Some(t.gv().as_str())
                        || obj["kind"].as_str() != Some(t.kind.as_str())
                    {
                        return status(
                            400,
                            "BadRequest",
                            format!(
                                "apiVersion/kind {}/{} do not match the URL ({} {})",
                                obj["apiVersion"],
                                obj["kind"],
                                t.gv(),
                                t.kind
                            ),
                        );
                    }
                    if obj["metadata"]["name"].as_str() != Some(name.as_str()) {
                        return status(
                            400,
                            "BadRequest",
                            "the name of the object does not match the name on the URL".into(),
                        );
                    }
                    if let (Some(body_ns), Some(url_ns)) =
                        (obj["metadata"]["namespace"].as_str(), ns.as_deref())
                    {
                        if body_ns != url_ns {
                            return status(400, "BadRequest", "the namespace of the object does not match the namespace on the URL".into());
                        }
                    }
                    if !t.namespaced && obj["metadata"]["namespace"].is_string() {
                        return status(
                            400,
                            "BadRequest",
                            "a cluster-scoped object must not set metadata.namespace".into(),
                        );
                    }
                    if !g.objects.contains_key(&key) {
                        return create(g, &t, ns, &name, obj, &manager, "Apply", inner.clone());
                    }
                    let mut applied = obj.clone();
                    applied.as_object_mut().unwrap().remove("status");
                    let stored = g.objects.get(&key).unwrap();
                    let merged = apply_merge(
                        &stored.obj,
                        stored.applied.get(&manager),
                        &applied,
                        &manager,
                        &t.gv(),
                    );
                    let changed = merged != stored.obj;
                    let mut merged = merged;
                    if changed {
                        g.rv += 1;
                        merged["metadata"]["resourceVersion"] = json!(g.rv.to_string());
                    }
                    let s = g.objects.get_mut(&key).unwrap();
                    s.obj = merged.clone();
                    s.applied.insert(manager, applied);
                    if t.group == "apiextensions.k8s.io" {
                        schedule_crd(inner.clone(), name.clone(), g.crd_delay);
                    }
                    ok_json(200, &merged)
                }
                Method::DELETE => {
                    let Some(s) = g.objects.remove(&key) else {
                        return not_found(&t, &name);
                    };
                    if t.group.is_empty() && t.kind == "Namespace" {
                        g.objects.retain(|k, _| k.2 != name);
                    }
                    if t.group == "apiextensions.k8s.io" {
                        let gone: Vec<ResType> = g
                            .types
                            .iter()
                            .filter(|x| x.crd.as_deref() == Some(name.as_str()))
                            .cloned()
                            .collect();
                        g.types.retain(|x| x.crd.as_deref() != Some(name.as_str()));
                        for x in gone {
                            g.objects
                                .retain(|k, _| !(k.0 == x.group && k.1 == x.plural));
                        }
                    }
                    let _ = s;
                    ok_json(
                        200,
                        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                                          "details": {"name": name, "kind": t.plural}}),
                    )
                }
                _ => status(405, "MethodNotAllowed", "method not allowed".into()),
            }
        }
        _ => status(
            404,
            "NotFound",
            "the server could not find the requested resource".into(),
        ),
    }
}

fn not_found(t: &ResType, name: &str) -> Response {
    let what = if t.group.is_empty() {
        t.plural.clone()
    } else {
        format!("{}.{}", t.plural, t.group)
    };
    status(404, "NotFound", format!("{what} \"{name}\" not found"))
}

fn find_type(types: &[ResType], group: &str, version: &str, plural: &str) -> Option<ResType> {
    types
        .iter()
        .find(|t| t.group == group && t.version == version && t.plural == plural)
        .cloned()
}

fn group_names(types: &[ResType]) -> Vec<String> {
    let mut names: Vec<String> = types
        .iter()
        .filter(|t| !t.group.is_empty())
        .map(|t| t.group.clone())
        .collect();
    names.sort();
    names.dedup();
    names
}

fn group_json(types: &[ResType], name: &str) -> Value {
    let mut versions: Vec<String> = types
        .iter()
        .filter(|t| t.group == name)
        .map(|t| t.version.clone())
        .collect();
    versions.sort();
    versions.dedup();
    let vs: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{name}/{v}"), "version": v}))
        .collect();
    json!({"name": name, "versions": vs, "preferredVersion": vs[0]})
}

fn list(g: &Inner, t: &ResType, ns: Option<&str>, selector: Option<&str>) -> Response {
    let empty = Map::new();
    let items: Vec<Value> = g
        .objects
        .iter()
        .filter(|(k, _)| k.0 == t.group && k.1 == t.plural && ns.is_none_or(|n| k.2 == n))
        .filter(|(_, s)| {
            let labels = s.obj["metadata"]["labels"].as_object().unwrap_or(&empty);
            selector.is_none_or(|sel| selector_matches(sel, labels))
        })
        .map(|(_, s)| {
            // The apiserver omits apiVersion/kind on items of built-in lists.
            let mut o = s.obj.clone();
            if t.crd.is_none() {
                let m = o.as_object_mut().unwrap();
                m.remove("apiVersion");
                m.remove("kind");
            }
            o
        })
        .collect();
    ok_json(
        200,
        &json!({"apiVersion": t.gv(), "kind": format!("{}List", t.kind),
                "metadata": {"resourceVersion": g.rv.to_string()}, "items": items}),
    )
}

#[allow(clippy::too_many_arguments)]
fn create(
    g: &mut Inner,
    t: &ResType,
    ns: Option<String>,
    name: &str,
    mut obj: Value,
    manager: &str,
    operation: &str,
    inner: Arc<Mutex<Inner>>,
) -> Response {
    if !valid_name_for(t, name) {
        return status(
            422,
            "Invalid",
            format!("{} \"{name}\" is invalid: metadata.name: Invalid value: \"{name}\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.'", t.kind),
        );
    }
    if let Some(ns) = &ns {
        if !g.objects.contains_key(&(
            String::new(),
            "namespaces".into(),
            String::new(),
            ns.clone(),
        )) {
            return status(404, "NotFound", format!("namespaces \"{ns}\" not found"));
        }
    }
    let key: Key = (
        t.group.clone(),
        t.plural.clone(),
        ns.clone().unwrap_or_default(),
        name.to_string(),
    );
    if g.objects.contains_key(&key) {
        return status(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", t.plural),
        );
    }
    if t.group == "apiextensions.k8s.io" {
        if let Err(msg) = check_crd(&obj, name) {
            return status(
                422,
                "Invalid",
                format!(
                    "CustomResourceDefinition.apiextensions.k8s.io \"{name}\" is invalid: {msg}"
                ),
            );
        }
    }
    obj.as_object_mut().unwrap().remove("status");
    let applied = obj.clone();
    if let Some(ns) = &ns {
        obj["metadata"]["namespace"] = json!(ns);
    }
    g.rv += 1;
    let rv = g.rv;
    stamp_new(&mut obj, rv, manager, operation, &t.gv());
    let mut applied_by = BTreeMap::new();
    if operation == "Apply" {
        applied_by.insert(manager.to_string(), applied);
    }
    g.objects.insert(
        key,
        Stored {
            obj: obj.clone(),
            applied: applied_by,
        },
    );
    if t.group == "apiextensions.k8s.io" {
        schedule_crd(inner, name.to_string(), g.crd_delay);
    }
    ok_json(201, &obj)
}

fn check_crd(obj: &Value, name: &str) -> Result<(), String> {
    let spec = &obj["spec"];
    let group = spec["group"].as_str().ok_or("spec.group: Required value")?;
    let plural = spec["names"]["plural"]
        .as_str()
        .ok_or("spec.names.plural: Required value")?;
    spec["names"]["kind"]
        .as_str()
        .ok_or("spec.names.kind: Required value")?;
    if name != format!("{plural}.{group}") {
        return Err(format!(
            "metadata.name: Invalid value: \"{name}\": must be spec.names.plural+\".\"+spec.group"
        ));
    }
    match spec["scope"].as_str() {
        Some("Namespaced") | Some("Cluster") => {}
        _ => return Err("spec.scope: Unsupported value".into()),
    }
    let versions = spec["versions"]
        .as_array()
        .ok_or("spec.versions: Required value")?;
    if versions
        .iter()
        .filter(|v| v["storage"].as_bool() == Some(true))
        .count()
        != 1
    {
        return Err(
            "spec.versions: Invalid value: must have exactly one version marked as storage version"
                .into(),
        );
    }
    if (group.ends_with(".k8s.io") || group.ends_with(".kubernetes.io"))
        && obj["metadata"]["annotations"]["api-approved.kubernetes.io"]
            .as_str()
            .is_none()
    {
        return Err("metadata.annotations[api-approved.kubernetes.io]: Required value: protected groups must have approval annotation".into());
    }
    Ok(())
}

/// Marks a CRD Established and serves its versions after the configured delay.
fn schedule_crd(inner: Arc<Mutex<Inner>>, name: String, delay: Duration) {
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        let mut g = inner.lock().unwrap();
        let key: Key = (
            "apiextensions.k8s.io".into(),
            "customresourcedefinitions".into(),
            String::new(),
            name.clone(),
        );
        let Some(spec) = g.objects.get(&key).map(|s| s.obj["spec"].clone()) else {
            return;
        };
        let group = spec["group"].as_str().unwrap_or("").to_string();
        let kind = spec["names"]["kind"].as_str().unwrap_or("").to_string();
        let plural = spec["names"]["plural"].as_str().unwrap_or("").to_string();
        let namespaced = spec["scope"].as_str() == Some("Namespaced");
        g.types.retain(|t| t.crd.as_deref() != Some(name.as_str()));
        for v in spec["versions"].as_array().cloned().unwrap_or_default() {
            if v["served"].as_bool() == Some(true) {
                g.types.push(ResType {
                    group: group.clone(),
                    version: v["name"].as_str().unwrap_or("").to_string(),
                    kind: kind.clone(),
                    plural: plural.clone(),
                    namespaced,
                    crd: Some(name.clone()),
                });
            }
        }
        g.rv += 1;
        let rv = g.rv;
        let s = g.objects.get_mut(&key).unwrap();
        s.obj["status"] = json!({
            "conditions": [
                {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts"},
                {"type": "Established", "status": "True", "reason": "InitialNamesAccepted"},
            ],
            "acceptedNames": spec["names"].clone(),
            "storedVersions": [],
        });
        s.obj["metadata"]["resourceVersion"] = json!(rv.to_string());
    });
}

/// Server-side apply, simplified to per-manager ownership of top-level
/// fields and of individual label/annotation keys.
fn apply_merge(
    existing: &Value,
    prev: Option<&Value>,
    applied: &Value,
    manager: &str,
    api_version: &str,
) -> Value {
    let mut out = existing.clone();
    let skip = ["metadata", "status", "apiVersion", "kind"];
    let o = out.as_object_mut().unwrap();
    for (k, v) in applied.as_object().unwrap() {
        if !skip.contains(&k.as_str()) {
            o.insert(k.clone(), v.clone());
        }
    }
    if let Some(prev) = prev.and_then(Value::as_object) {
        for k in prev.keys() {
            if !skip.contains(&k.as_str()) && applied.get(k).is_none() {
                o.remove(k);
            }
        }
    }
    for field in ["labels", "annotations"] {
        let mut m = out["metadata"][field]
            .as_object()
            .cloned()
            .unwrap_or_default();
        let new = applied["metadata"][field]
            .as_object()
            .cloned()
            .unwrap_or_default();
        if let Some(p) = prev.and_then(|p| p["metadata"][field].as_object()) {
            for k in p.keys() {
                if !new.contains_key(k) {
                    m.remove(k);
                }
            }
        }
        for (k, v) in new {
            m.insert(k, v);
        }
        if m.is_empty() {
            out["metadata"].as_object_mut().unwrap().remove(field);
        } else {
            out["metadata"][field] = Value::Object(m);
        }
    }
    let mf = out["metadata"]["managedFields"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let has = mf
        .iter()
        .any(|e| e["manager"] == manager && e["operation"] == "Apply");
    if !has {
        let mut mf = mf;
        mf.push(
            json!({"manager": manager, "operation": "Apply", "apiVersion": api_version,
                       "fieldsType": "FieldsV1", "fieldsV1": {}, "time": now_rfc3339()}),
        );
        out["metadata"]["managedFields"] = Value::Array(mf);
    }
    out
}

/// Names of objects of a type carrying `label=value`.
pub fn names_with_label(objs: &[Value], label: &str, value: &str) -> HashSet<String> {
    objs.iter()
        .filter(|o| o["metadata"]["labels"][label].as_str() == Some(value))
        .map(|o| o["metadata"]["name"].as_str().unwrap_or("").to_string())
        .collect()
}
