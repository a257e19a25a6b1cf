//! Talking to the apiserver: apply one stack, prune what left it, remove a
//! whole stack.
//!
//! Ordering: CustomResourceDefinitions first (then waited for `Established`),
//! then Namespaces, then everything else in file and document order.
//!
//! Pruning needs to know which resource types to look in. Listing every type
//! the apiserver serves on every apply is expensive and would make pruning
//! depend on unrelated aggregated APIs being healthy, so each stack keeps a
//! *record* in the cluster: the ConfigMap `mkectl-stack-<stack>` in the state
//! namespace lists the `(group, kind)` pairs the stack has ever applied. It
//! is widened before anything is applied and narrowed only after a prune
//! succeeded, so a crash in between never forgets a type, and a new leader
//! (another controller) prunes the same types. Limit: objects labelled for a
//! stack in a type that was never in its record (e.g. the record was deleted
//! by hand) are not found by pruning.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;

use crate::kubeapi::{discovery, Api, ApiResource, Client, DynamicObject, ListParams};
use crate::telemetry::Chain;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tracing::{debug, info};

use super::manifest::Manifest;
use super::{ApplierError, ADOPTED_ANNOTATION, FIELD_MANAGER, RECORD_LABEL, STACK_LABEL};

const CRD_GROUP: &str = "apiextensions.k8s.io";
const CRD_KIND: &str = "CustomResourceDefinition";
/// Poll interval while waiting for CRDs and their discovery.
const CRD_POLL: Duration = Duration::from_millis(100);
/// Key of the record ConfigMap holding the JSON list of types.
const RECORD_KEY: &str = "resources";
/// Prefix of the record ConfigMap names.
pub const RECORD_PREFIX: &str = "mkectl-stack-";

/// A resource type as the record stores it (version-free, so an upgrade of
/// the served version keeps finding the objects).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TypeRef {
    pub group: String,
    pub kind: String,
}

impl TypeRef {
    fn describe(&self) -> String {
        if self.group.is_empty() {
            self.kind.clone()
        } else {
            format!("{}.{}", self.kind, self.group)
        }
    }
}

/// Identity of an object independent of the version it was read through.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ObjectKey {
    group: String,
    kind: String,
    namespace: Option<String>,
    name: String,
}

/// Applies and prunes stacks through one client.
#[derive(Clone)]
pub struct Engine {
    client: Client,
    state_namespace: String,
    crd_timeout: Duration,
}

/// The outcome of a successful stack apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    pub objects: usize,
    pub pruned: usize,
}

impl Engine {
    pub fn new(client: Client, state_namespace: String, crd_timeout: Duration) -> Self {
        Self {
            client,
            state_namespace,
            crd_timeout,
        }
    }

    /// Applies every manifest of `stack` and, only when all of them applied,
    /// prunes the stack's objects that are no longer in it.
    pub async fn apply_stack(
        &self,
        stack: &str,
        manifests: &[Manifest],
    ) -> Result<Applied, ApplierError> {
        check_duplicates(manifests)?;
        let current: BTreeSet<TypeRef> = manifests
            .iter()
            .map(|m| TypeRef {
                group: m.group().to_string(),
                kind: m.kind.clone(),
            })
            .collect();
        // Widen the record before applying, so a crash after the apply still
        // knows where to prune.
        let recorded = self.read_record(stack).await?;
        let widened: BTreeSet<TypeRef> = recorded.union(&current).cloned().collect();
        if widened != recorded {
            self.write_record(stack, &widened).await?;
        }

        // Kinds defined by CRDs of this stack may need a moment to show up in
        // discovery after their CRD is Established.
        let crd_kinds: HashSet<(String, String)> = manifests
            .iter()
            .filter(|m| is_crd(m))
            .filter_map(|m| {
                let spec = m.object.get("spec")?;
                Some((
                    spec.get("group")?.as_str()?.to_string(),
                    spec.get("names")?.get("kind")?.as_str()?.to_string(),
                ))
            })
            .collect();

        let mut errors = Vec::new();
        let mut resolved: HashMap<(String, String), ApiResource> = HashMap::new();
        let (crds, rest): (Vec<&Manifest>, Vec<&Manifest>) =
            manifests.iter().partition(|m| is_crd(m));
        let (namespaces, others): (Vec<&Manifest>, Vec<&Manifest>) = rest
            .into_iter()
            .partition(|m| m.group().is_empty() && m.kind == "Namespace");

        // Phase 1: CRDs, then wait for them.
        let mut applied_crds = Vec::new();
        for m in &crds {
            match self.apply_one(stack, m, &mut resolved, false).await {
                Ok(()) => applied_crds.push(m.name.clone()),
                Err(e) => errors.push(e),
            }
        }
        for name in &applied_crds {
            if let Err(e) = self.wait_crd_established(name).await {
                errors.push(e);
            }
        }
        // Phase 2 and 3: namespaces, then the rest.
        for m in namespaces.iter().chain(others.iter()) {
            let wait = crd_kinds.contains(&(m.group().to_string(), m.kind.clone()));
            if let Err(e) = self.apply_one(stack, m, &mut resolved, wait).await {
                errors.push(e);
            }
        }
        if !errors.is_empty() {
            return Err(ApplierError::from_many(errors));
        }

        let desired: HashSet<ObjectKey> = manifests
            .iter()
            .map(|m| {
                let namespaced = resolved
                    .get(&(m.api_version.clone(), m.kind.clone()))
                    .map(|ar| ar.namespaced)
                    .unwrap_or(m.namespace.is_some());
                ObjectKey {
                    group: m.group().to_string(),
                    kind: m.kind.clone(),
                    namespace: if namespaced {
                        Some(m.namespace.clone().unwrap_or_else(|| "default".into()))
                    } else {
                        None
                    },
                    name: m.name.clone(),
                }
            })
            .collect();
        let (pruned, gone) = self.prune(stack, &widened, &desired).await?;
        // Narrow the record to what the stack uses now (plus nothing else:
        // every other type was just emptied of this stack's objects).
        let mut narrowed = current;
        for t in gone {
            narrowed.remove(&t);
        }
        if narrowed != widened {
            self.write_record(stack, &narrowed).await?;
        }
        Ok(Applied {
            objects: manifests.len(),
            pruned,
        })
    }

    /// Deletes every object of a stack that is gone from disk, then its
    /// record. Returns `None` when the cluster has no record of the stack.
    pub async fn remove_stack(&self, stack: &str) -> Result<Option<usize>, ApplierError> {
        let Some(recorded) = self.read_record_opt(stack).await? else {
            return Ok(None);
        };
        let (pruned, _) = self.prune(stack, &recorded, &HashSet::new()).await?;
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.state_namespace);
        match api.delete(&record_name(stack)).await {
            Ok(()) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(self.record_err(stack, Chain(&e))),
        }
        Ok(Some(pruned))
    }

    async fn apply_one(
        &self,
        stack: &str,
        m: &Manifest,
        resolved: &mut HashMap<(String, String), ApiResource>,
        wait_for_discovery: bool,
    ) -> Result<(), ApplierError> {
        let key = (m.api_version.clone(), m.kind.clone());
        let ar = match resolved.get(&key) {
            Some(r) => r.clone(),
            None => {
                let r = self.resolve(m, wait_for_discovery).await?;
                resolved.insert(key, r.clone());
                r
            }
        };
        let mut obj = m.object.clone();
        let meta = obj
            .entry("metadata")
            .or_insert_with(|| json!({}))
            .as_object_mut();
        // Invariant: parse_file rejected documents whose metadata is not a mapping.
        let Some(meta) = meta else {
            return Err(ApplierError::InvalidObject {
                file: m.file.clone(),
                index: m.index,
                line: m.line,
                message: "metadata is not a mapping".into(),
            });
        };
        let labels = meta.entry("labels").or_insert_with(|| json!({}));
        if labels.is_null() {
            *labels = json!({});
        }
        if let Some(l) = labels.as_object_mut() {
            l.insert(STACK_LABEL.to_string(), Value::String(stack.to_string()));
        }
        let api: Api<DynamicObject> = if ar.namespaced {
            let ns = m.namespace.clone().unwrap_or_else(|| "default".to_string());
            meta.insert("namespace".into(), Value::String(ns.clone()));
            Api::new(self.client.clone(), &ar, Some(&ns))
        } else {
            meta.remove("namespace");
            Api::new(self.client.clone(), &ar, None)
        };
        // An object someone else created is adopted, and stays marked so
        // (the annotation is re-applied every time, or SSA would drop it).
        let existing = api
            .get_opt(&m.name)
            .await
            .map_err(|source| ApplierError::Apply {
                file: m.file.clone(),
                index: m.index,
                object: m.describe(),
                source,
            })?;
        let adopted = existing
            .as_ref()
            .is_some_and(|o| is_adopted(o) || !managed_by_us(o));
        if adopted {
            let ann = meta.entry("annotations").or_insert_with(|| json!({}));
            if ann.is_null() {
                *ann = json!({});
            }
            if let Some(a) = ann.as_object_mut() {
                a.insert(ADOPTED_ANNOTATION.to_string(), Value::String("true".into()));
            }
            if existing.as_ref().is_some_and(|o| !managed_by_us(o)) {
                info!(component = "applier", stack, object = %m.describe(), "adopting an existing object; it will never be pruned");
            }
        }
        // Force: the stack on disk is the source of truth for the fields it sets.
        api.apply(&m.name, FIELD_MANAGER, true, &Value::Object(obj))
            .await
            .map_err(|source| ApplierError::Apply {
                file: m.file.clone(),
                index: m.index,
                object: m.describe(),
                source,
            })?;
        debug!(component = "applier", stack, object = %m.describe(), "applied");
        Ok(())
    }

    /// Finds the REST resource of a manifest's kind at its exact version.
    async fn resolve(
        &self,
        m: &Manifest,
        wait_for_discovery: bool,
    ) -> Result<ApiResource, ApplierError> {
        let deadline = tokio::time::Instant::now() + self.crd_timeout;
        let unknown = |message: String| ApplierError::UnknownKind {
            file: m.file.clone(),
            index: m.index,
            api_version: m.api_version.clone(),
            kind: m.kind.clone(),
            message,
        };
        loop {
            match discovery::pinned_kind(&self.client, m.group(), m.version(), &m.kind).await {
                Ok(Some(r)) => return Ok(r),
                Ok(None) => {
                    if !wait_for_discovery || tokio::time::Instant::now() >= deadline {
                        return Err(unknown("not in the API server's discovery".into()));
                    }
                }
                Err(e) => return Err(unknown(Chain(&e).to_string())),
            }
            tokio::time::sleep(CRD_POLL).await;
        }
    }

    async fn wait_crd_established(&self, name: &str) -> Result<(), ApplierError> {
        let ar = ApiResource::of::<CustomResourceDefinition>();
        let api: Api<DynamicObject> = Api::new(self.client.clone(), &ar, None);
        let started = tokio::time::Instant::now();
        let mut logged = false;
        loop {
            if let Ok(Some(crd)) = api.get_opt(name).await {
                if crd_established(&crd.data) {
                    return Ok(());
                }
            }
            if started.elapsed() >= self.crd_timeout {
                return Err(ApplierError::CrdNotEstablished {
                    name: name.to_string(),
                    waited: self.crd_timeout,
                });
            }
            if !logged && started.elapsed() >= Duration::from_secs(2) {
                info!(
                    component = "applier",
                    crd = name,
                    "waiting for CRD to be Established"
                );
                logged = true;
            }
            tokio::time::sleep(CRD_POLL).await;
        }
    }

    /// Deletes objects labelled for `stack` in `types` that are not in
    /// `desired` and that this applier manages. Returns how many were deleted
    /// and which types the apiserver no longer serves.
    async fn prune(
        &self,
        stack: &str,
        types: &BTreeSet<TypeRef>,
        desired: &HashSet<ObjectKey>,
    ) -> Result<(usize, Vec<TypeRef>), ApplierError> {
        let selector = format!("{STACK_LABEL}={stack}");
        // Each group's discovery is read once per prune, whatever the
        // number of its kinds in the record.
        let mut groups: HashMap<String, Option<discovery::ApiGroup>> = HashMap::new();
        let mut victims: Vec<(u8, ApiResource, ObjectKey)> = Vec::new();
        let mut gone = Vec::new();
        for t in types {
            if !groups.contains_key(&t.group) {
                let g = discovery::group(&self.client, &t.group)
                    .await
                    .map_err(|source| ApplierError::PruneList {
                        stack: stack.to_string(),
                        resource: t.describe(),
                        source,
                    })?;
                groups.insert(t.group.clone(), g);
            }
            let Some(ar) = groups
                .get(&t.group)
                .and_then(Option::as_ref)
                .and_then(|g| g.recommended_kind(&t.kind))
                .cloned()
            else {
                // The type is no longer served (e.g. its CRD was deleted,
                // which deleted its objects too): nothing left to prune.
                gone.push(t.clone());
                continue;
            };
            if !ar.supports("list") {
                continue;
            }
            let api: Api<DynamicObject> = Api::new(self.client.clone(), &ar, None);
            let list = match api.list(&ListParams::default().labels(&selector)).await {
                Ok(l) => l,
                Err(e) if e.is_not_found() => {
                    gone.push(t.clone());
                    continue;
                }
                Err(source) => {
                    return Err(ApplierError::PruneList {
                        stack: stack.to_string(),
                        resource: t.describe(),
                        source,
                    })
                }
            };
            for obj in list.items {
                let key = ObjectKey {
                    group: t.group.clone(),
                    kind: t.kind.clone(),
                    namespace: if ar.namespaced {
                        obj.metadata.namespace.clone()
                    } else {
                        None
                    },
                    name: obj.metadata.name.clone().unwrap_or_default(),
                };
                if desired.contains(&key) || key.name.is_empty() {
                    continue;
                }
                // The label alone is not proof: someone may have copied it.
                // Only objects our field manager applied are ours to delete.
                if !managed_by_us(&obj) {
                    debug!(component = "applier", stack, object = %key.name, "labelled but not applied by mkectl; left alone");
                    continue;
                }
                if is_adopted(&obj) {
                    info!(component = "applier", stack, object = %key.name, "left the stack but was adopted, not created, by mkectl; left in place");
                    continue;
                }
                // Delete dependents before what contains them.
                let order = if t.group == CRD_GROUP && t.kind == CRD_KIND {
                    2
                } else if t.group.is_empty() && t.kind == "Namespace" {
                    1
                } else {
                    0
                };
                victims.push((order, ar.clone(), key));
            }
        }
        victims.sort_by_key(|v| v.0);
        let mut pruned = 0;
        for (_, ar, key) in victims {
            let ns = key.namespace.as_deref().filter(|_| ar.namespaced);
            let api: Api<DynamicObject> = Api::new(self.client.clone(), &ar, ns);
            let what = match &key.namespace {
                Some(ns) => format!("{} {ns}/{}", key.kind, key.name),
                None => format!("{} {}", key.kind, key.name),
            };
            match api.delete(&key.name).await {
                Ok(()) => {
                    pruned += 1;
                    info!(component = "applier", stack, object = %what, "pruned");
                }
                Err(e) if e.is_not_found() => {}
                Err(source) => {
                    return Err(ApplierError::Prune {
                        stack: stack.to_string(),
                        object: what,
                        source,
                    })
                }
            }
        }
        Ok((pruned, gone))
    }

    fn record_err(&self, stack: &str, message: impl std::fmt::Display) -> ApplierError {
        ApplierError::Record {
            namespace: self.state_namespace.clone(),
            name: record_name(stack),
            message: message.to_string(),
        }
    }

    async fn read_record(&self, stack: &str) -> Result<BTreeSet<TypeRef>, ApplierError> {
        Ok(self.read_record_opt(stack).await?.unwrap_or_default())
    }

    async fn read_record_opt(
        &self,
        stack: &str,
    ) -> Result<Option<BTreeSet<TypeRef>>, ApplierError> {
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.state_namespace);
        let cm = api
            .get_opt(&record_name(stack))
            .await
            .map_err(|e| self.record_err(stack, Chain(&e)))?;
        let Some(cm) = cm else { return Ok(None) };
        let raw = cm
            .data
            .as_ref()
            .and_then(|d| d.get(RECORD_KEY))
            .map(String::as_str)
            .unwrap_or("[]");
        let types: Vec<TypeRef> = serde_json::from_str(raw)
            .map_err(|e| self.record_err(stack, format!("unreadable {RECORD_KEY}: {e}")))?;
        Ok(Some(types.into_iter().collect()))
    }

    async fn write_record(
        &self,
        stack: &str,
        types: &BTreeSet<TypeRef>,
    ) -> Result<(), ApplierError> {
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.state_namespace);
        let list: Vec<&TypeRef> = types.iter().collect();
        let body = json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": record_name(stack),
                "namespace": self.state_namespace,
                "labels": { RECORD_LABEL: stack },
            },
            "data": { RECORD_KEY: serde_json::to_string(&list).unwrap_or_else(|_| "[]".into()) },
        });
        api.apply(&record_name(stack), FIELD_MANAGER, true, &body)
            .await
            .map_err(|e| self.record_err(stack, Chain(&e)))?;
        Ok(())
    }
}

pub fn record_name(stack: &str) -> String {
    format!("{RECORD_PREFIX}{stack}")
}

fn is_crd(m: &Manifest) -> bool {
    m.group() == CRD_GROUP && m.kind == CRD_KIND
}

fn crd_established(data: &Value) -> bool {
    data.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|conds| {
            conds.iter().any(|c| {
                c.get("type").and_then(Value::as_str) == Some("Established")
                    && c.get("status").and_then(Value::as_str) == Some("True")
            })
        })
}

fn is_adopted(obj: &DynamicObject) -> bool {
    obj.metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.get(ADOPTED_ANNOTATION).map(String::as_str) == Some("true"))
}

fn managed_by_us(obj: &DynamicObject) -> bool {
    obj.metadata.managed_fields.as_ref().is_some_and(|mf| {
        mf.iter()
            .any(|f| f.manager.as_deref() == Some(FIELD_MANAGER))
    })
}

/// Two documents for the same object would fight each other on every apply.
fn check_duplicates(manifests: &[Manifest]) -> Result<(), ApplierError> {
    let mut seen: HashMap<(String, String, Option<String>, String), &Manifest> = HashMap::new();
    let mut errors = Vec::new();
    for m in manifests {
        let key = (
            m.group().to_string(),
            m.kind.clone(),
            m.namespace.clone(),
            m.name.clone(),
        );
        if let Some(first) = seen.get(&key) {
            errors.push(ApplierError::InvalidObject {
                file: m.file.clone(),
                index: m.index,
                line: m.line,
                message: format!(
                    "{} is also defined in {} document index {}",
                    m.describe(),
                    first.file.display(),
                    first.index
                ),
            });
        } else {
            seen.insert(key, m);
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ApplierError::from_many(errors))
    }
}
