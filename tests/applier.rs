//! The manifest applier against a stateful Kubernetes API emulation over
//! real HTTP (tests/common_applier explains why not kmock): the cases that
//! need fault injection (CRD establishment delays, a leader that crashes
//! without releasing its lease, request order). The same behaviours against
//! the real kube-apiserver are in `tests/applier_real.rs`.

mod common_applier;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use common_applier::FakeKube;
use mkectl::applier::{
    Applier, ApplierConfig, ApplierError, ApplierStatus, StackState, StatusHandle, STACK_LABEL,
};
use mkectl::fsutil;
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const LEASE: Duration = Duration::from_secs(2);
const RETRY: Duration = Duration::from_millis(200);
/// Upper bound for anything the applier should do promptly.
const WAIT: Duration = Duration::from_secs(20);

fn config(fake: &FakeKube, dir: &Path, identity: &str) -> ApplierConfig {
    let mut c = ApplierConfig::new(dir.to_path_buf(), fake.client(), identity.to_string());
    c.lease_duration = LEASE;
    c.retry_period = RETRY;
    c.debounce = Duration::from_millis(100);
    c.crd_establish_timeout = Duration::from_secs(10);
    c.error_retry = Duration::from_millis(300);
    c
}

struct Running {
    status: StatusHandle,
    cancel: CancellationToken,
    join: JoinHandle<Result<(), ApplierError>>,
}

impl Running {
    async fn stop(self) {
        self.cancel.cancel();
        tokio::time::timeout(WAIT, self.join)
            .await
            .expect("applier stops")
            .unwrap()
            .unwrap();
    }
}

fn start(cfg: ApplierConfig) -> Running {
    let applier = Applier::new(cfg).unwrap();
    let status = applier.status();
    let cancel = CancellationToken::new();
    let join = tokio::spawn(applier.run(cancel.clone()));
    Running {
        status,
        cancel,
        join,
    }
}

async fn wait(
    status: &StatusHandle,
    what: &str,
    pred: impl FnMut(&ApplierStatus) -> bool,
) -> ApplierStatus {
    match tokio::time::timeout(WAIT, status.wait_until(pred)).await {
        Ok(s) => s,
        Err(_) => panic!(
            "timed out waiting for {what}; status: {:#?}",
            status.snapshot()
        ),
    }
}

/// Waits until `stack` was updated after `since` and returns its status.
async fn wait_stack(
    status: &StatusHandle,
    stack: &str,
    since: SystemTime,
) -> mkectl::applier::StackStatus {
    let s = wait(status, &format!("stack {stack} to be processed"), |s| {
        s.stack(stack).is_some_and(|x| x.updated > since)
    })
    .await;
    s.stack(stack).unwrap().clone()
}

fn write(dir: &Path, rel: &str, contents: &str) {
    let p = dir.join(rel);
    fsutil::ensure_dir(p.parent().unwrap(), 0o700).unwrap();
    fsutil::write_atomic(&p, contents.as_bytes(), 0o644).unwrap();
}

fn cm(name: &str, ns: &str, data: &str) -> String {
    format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  namespace: {ns}\ndata:\n{data}\n")
}

fn label(obj: &Value) -> Option<&str> {
    obj["metadata"]["labels"][STACK_LABEL].as_str()
}

fn record(fake: &FakeKube, stack: &str) -> Option<Vec<Value>> {
    let cm = fake.get(
        "",
        "configmaps",
        Some("kube-system"),
        &format!("mkectl-stack-{stack}"),
    )?;
    Some(serde_json::from_str(cm["data"]["resources"].as_str().unwrap()).unwrap())
}

fn tmpdir() -> (tempfile::TempDir, PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let p = t.path().join("manifests");
    (t, p)
}

#[tokio::test]
async fn applies_multi_document_stacks_in_order_with_labels() {
    let fake = FakeKube::start().await;
    let (_t, dir) = tmpdir();
    // The ConfigMap comes before its Namespace in the file: the applier must
    // still create the namespace first (the API 404s otherwise).
    write(
        &dir,
        "app/01-config.yaml",
        &format!(
            "{}---\n# only a comment\n---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: demo\n",
            cm("settings", "demo", "  mode: fast")
        ),
    );
    write(
        &dir,
        "app/02-workload.yml",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: demo}\n\
         spec: {replicas: 2, selector: {matchLabels: {app: web}}, template: {metadata: {labels: {app: web}}, spec: {containers: [{name: c, image: nginx}]}}}\n\
         ---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {name: \"demo:reader\"}\nrules: []\n\
         ---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: no-namespace}\ndata: {a: b}\n",
    );
    let a = start(config(&fake, &dir, "ctrl-1"));
    let s = wait(&a.status, "app applied", |s| {
        s.stack("app")
            .is_some_and(|x| x.state == StackState::Applied)
    })
    .await;
    assert!(s.leader);
    let app = s.stack("app").unwrap();
    assert_eq!(app.objects, 5);
    assert!(app.last_applied.is_some());

    let settings = fake
        .get("", "configmaps", Some("demo"), "settings")
        .expect("configmap");
    assert_eq!(settings["data"]["mode"], "fast");
    assert_eq!(label(&settings), Some("app"));
    let managers: Vec<&str> = settings["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["manager"].as_str().unwrap())
        .collect();
    assert_eq!(managers, ["mkectl"]);
    assert_eq!(
        label(
            &fake
                .get("apps", "deployments", Some("demo"), "web")
                .unwrap()
        ),
        Some("app")
    );
    assert_eq!(
        label(&fake.get("", "namespaces", None, "demo").unwrap()),
        Some("app")
    );
    assert_eq!(
        label(
            &fake
                .get(
                    "rbac.authorization.k8s.io",
                    "clusterroles",
                    None,
                    "demo:reader"
                )
                .unwrap()
        ),
        Some("app")
    );
    // A namespaced object without a namespace lands in "default".
    assert!(fake
        .get("", "configmaps", Some("default"), "no-namespace")
        .is_some());

    // Every write was a server-side apply by field manager mkectl, and the
    // namespace was applied before the objects in it.
    let reqs = fake.requests();
    let patches: Vec<_> = reqs.iter().filter(|r| r.method == "PATCH").collect();
    assert!(!patches.is_empty());
    for p in &patches {
        assert_eq!(p.content_type, "application/apply-patch+yaml", "{p:?}");
        assert!(
            p.query.contains("fieldManager=mkectl") && p.query.contains("force=true"),
            "{p:?}"
        );
    }
    let pos = |suffix: &str| {
        reqs.iter()
            .position(|r| r.method == "PATCH" && r.path.ends_with(suffix))
            .unwrap_or_else(|| panic!("no PATCH of {suffix}"))
    };
    assert!(pos("/namespaces/demo") < pos("/configmaps/settings"));
    assert!(pos("/namespaces/demo") < pos("/deployments/web"));

    // The stack's record names the types it uses, for pruning.
    let rec = record(&fake, "app").expect("record");
    assert_eq!(rec.len(), 4, "{rec:?}");
    a.stop().await;
    assert_eq!(
        fake.get(
            "coordination.k8s.io",
            "leases",
            Some("kube-system"),
            "mkectl-applier"
        )
        .unwrap()["spec"]["holderIdentity"],
        Value::Null,
        "a graceful stop releases the lease"
    );
}

#[tokio::test]
async fn updates_fields_and_prunes_only_what_it_created() {
    let fake = FakeKube::start().await;
    let (_t, dir) = tmpdir();
    write(
        &dir,
        "app/main.yaml",
        &format!(
            "{}---\n{}---\n{}---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: web, namespace: default}}\nspec: {{replicas: 1}}\n",
            cm("a", "default", "  k1: v1\n  k2: v2"),
            cm("b", "default", "  x: y"),
            cm("legacy", "default", "  from: stack")
        ),
    );
    // An object that predates the stack: the stack adopts it.
    fake.insert(
        serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "legacy", "namespace": "default"}, "data": {"from": "kubectl"}}),
        "kubectl-create",
    );
    // Objects the applier did not create: one carries the stack label (copied
    // by someone), one does not. Neither may be touched.
    fake.insert(
        serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "foreign", "namespace": "default", "labels": {STACK_LABEL: "app"}}, "data": {"q": "1"}}),
        "kubectl-client-side-apply",
    );
    fake.insert(
        serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "unlabelled", "namespace": "default"}}),
        "kubectl-create",
    );
    let a = start(config(&fake, &dir, "ctrl-1"));
    wait(&a.status, "first apply", |s| {
        s.stack("app")
            .is_some_and(|x| x.state == StackState::Applied)
    })
    .await;
    let rv_before = fake.get("", "configmaps", Some("default"), "a").unwrap()["metadata"]
        ["resourceVersion"]
        .clone();

    // Update a, drop b, the deployment and the adopted legacy object.
    let t1 = SystemTime::now();
    write(&dir, "app/main.yaml", &cm("a", "default", "  k1: v1-new"));
    let st = wait_stack(&a.status, "app", t1).await;
    assert_eq!(st.state, StackState::Applied, "{st:?}");
    assert_eq!(st.objects, 1);

    let a_obj = fake.get("", "configmaps", Some("default"), "a").unwrap();
    assert_eq!(
        a_obj["data"],
        serde_json::json!({"k1": "v1-new"}),
        "k2 left the manifest, so it left the object"
    );
    assert_ne!(a_obj["metadata"]["resourceVersion"], rv_before);
    assert!(
        fake.get("", "configmaps", Some("default"), "b").is_none(),
        "b pruned"
    );
    assert!(
        fake.get("apps", "deployments", Some("default"), "web")
            .is_none(),
        "web pruned"
    );
    assert!(fake
        .get("", "configmaps", Some("default"), "foreign")
        .is_some());
    assert!(fake
        .get("", "configmaps", Some("default"), "unlabelled")
        .is_some());
    // The record narrowed to the one type still in use.
    assert_eq!(
        record(&fake, "app").unwrap(),
        vec![serde_json::json!({"group": "", "kind": "ConfigMap"})]
    );
    // Prunes only ever deleted the two objects that left the stack.
    let deletes: Vec<String> = fake
        .requests()
        .iter()
        .filter(|r| r.method == "DELETE")
        .map(|r| r.path.clone())
        .collect();
    assert_eq!(deletes.len(), 2, "{deletes:?}");
    a.stop().await;
}

const WIDGET_CRD: &str = concat!(
    "apiVersion: apiextensions.k8s.io/v1\n",
    "kind: CustomResourceDefinition\n",
    "metadata: {name: widgets.example.com}\n",
    "spec:\n",
    "  group: example.com\n",
    "  scope: Namespaced\n",
    "  names: {kind: Widget, plural: widgets, singular: widget, listKind: WidgetList}\n",
    "  versions:\n",
    "    - name: v1\n",
    "      served: true\n",
    "      storage: true\n",
    "      schema: {openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}}\n",
);

fn widget(name: &str) -> String {
    format!("apiVersion: example.com/v1\nkind: Widget\nmetadata: {{name: {name}, namespace: default}}\nspec: {{size: 3}}\n")
}

#[tokio::test]
async fn crds_are_established_before_their_custom_resources() {
    let fake = FakeKube::start().await;
    fake.set_crd_delay(Duration::from_millis(600));
    let (_t, dir) = tmpdir();
    // Custom resources first in the file, their CRD last.
    write(
        &dir,
        "widgets/all.yaml",
        &format!("{}---\n{}---\n{WIDGET_CRD}", widget("w1"), widget("w2")),
    );
    let a = start(config(&fake, &dir, "ctrl-1"));
    let s = wait(&a.status, "widgets settled", |s| {
        s.stack("widgets").is_some()
    })
    .await;
    assert_eq!(
        s.stack("widgets").unwrap().state,
        StackState::Applied,
        "{s:#?}"
    );
    assert!(fake
        .get("example.com", "widgets", Some("default"), "w1")
        .is_some());
    assert!(fake
        .get("example.com", "widgets", Some("default"), "w2")
        .is_some());

    let reqs = fake.requests();
    let crd_patch = reqs
        .iter()
        .position(|r| {
            r.method == "PATCH"
                && r.path
                    .ends_with("/customresourcedefinitions/widgets.example.com")
        })
        .unwrap();
    let first_widget = reqs
        .iter()
        .position(|r| r.path.contains("/widgets/"))
        .unwrap();
    assert!(crd_patch < first_widget);
    // Between the two, the applier polled the CRD until it was Established.
    assert!(reqs[crd_patch + 1..first_widget]
        .iter()
        .any(|r| r.method == "GET"
            && r.path
                .ends_with("/customresourcedefinitions/widgets.example.com")));
    // Every apply of a custom resource succeeded at the first attempt.
    let cr_applies: Vec<_> = reqs
        .iter()
        .filter(|r| r.method == "PATCH" && r.path.contains("/widgets/"))
        .collect();
    assert_eq!(cr_applies.len(), 2);
    assert!(cr_applies.iter().all(|r| r.status == 201), "{cr_applies:?}");

    // A custom resource leaving the stack is pruned; the CRD stays.
    let t1 = SystemTime::now();
    write(
        &dir,
        "widgets/all.yaml",
        &format!("{}---\n{WIDGET_CRD}", widget("w1")),
    );
    let st = wait_stack(&a.status, "widgets", t1).await;
    assert_eq!(st.state, StackState::Applied, "{st:?}");
    assert!(fake
        .get("example.com", "widgets", Some("default"), "w2")
        .is_none());
    assert!(fake
        .get("example.com", "widgets", Some("default"), "w1")
        .is_some());
    assert!(fake.serves("example.com", "widgets"));
    a.stop().await;
}

#[tokio::test]
async fn errors_never_prune_and_other_stacks_continue() {
    let fake = FakeKube::start().await;
    let (_t, dir) = tmpdir();
    write(
        &dir,
        "one/main.yaml",
        &format!(
            "{}---\n{}",
            cm("cm-x", "default", "  a: '1'"),
            cm("cm-y", "default", "  a: '1'")
        ),
    );
    write(&dir, "two/main.yaml", &cm("cm-z", "default", "  v: old"));
    let a = start(config(&fake, &dir, "ctrl-1"));
    wait(&a.status, "both applied", |s| {
        ["one", "two"]
            .iter()
            .all(|n| s.stack(n).is_some_and(|x| x.state == StackState::Applied))
    })
    .await;

    // 1. A parse error: y left the stack, but nothing may be pruned; the
    //    other stack still applies its change.
    let t1 = SystemTime::now();
    write(
        &dir,
        "one/main.yaml",
        &format!(
            "{}---\nkind: [unclosed\n",
            cm("cm-x", "default", "  a: '1'")
        ),
    );
    write(&dir, "two/main.yaml", &cm("cm-z", "default", "  v: new"));
    let one = wait_stack(&a.status, "one", t1).await;
    let StackState::Error { message } = &one.state else {
        panic!("{one:?}")
    };
    assert!(
        message.contains("one/main.yaml: document index 1 (line 9)"),
        "{message}"
    );
    let two = wait_stack(&a.status, "two", t1).await;
    assert_eq!(two.state, StackState::Applied);
    assert_eq!(
        fake.get("", "configmaps", Some("default"), "cm-z").unwrap()["data"]["v"],
        "new"
    );
    assert!(
        fake.get("", "configmaps", Some("default"), "cm-y")
            .is_some(),
        "parse error must not prune"
    );

    // 2. An apply error (the API rejects an invalid name).
    let t2 = SystemTime::now();
    write(
        &dir,
        "one/main.yaml",
        &format!(
            "{}---\n{}",
            cm("cm-x", "default", "  a: '1'"),
            cm("Bad_Name", "default", "  a: '1'")
        ),
    );
    let one = wait_stack(&a.status, "one", t2).await;
    let StackState::Error { message } = &one.state else {
        panic!("{one:?}")
    };
    assert!(
        message.contains("one/main.yaml: document index 1: applying ConfigMap default/Bad_Name"),
        "{message}"
    );
    assert!(
        message.contains("422") || message.contains("Invalid"),
        "{message}"
    );
    assert!(
        fake.get("", "configmaps", Some("default"), "cm-y")
            .is_some(),
        "apply error must not prune"
    );

    // 3. A kind the API does not serve.
    let t3 = SystemTime::now();
    write(
        &dir,
        "one/main.yaml",
        &format!(
            "{}---\napiVersion: nope.example.com/v1\nkind: Gadget\nmetadata: {{name: g}}\n",
            cm("cm-x", "default", "  a: '1'")
        ),
    );
    let one = wait_stack(&a.status, "one", t3).await;
    let StackState::Error { message } = &one.state else {
        panic!("{one:?}")
    };
    assert!(
        message.contains("document index 1") && message.contains("Gadget"),
        "{message}"
    );
    assert!(
        fake.get("", "configmaps", Some("default"), "cm-y")
            .is_some(),
        "unknown kind must not prune"
    );

    // 4. Fixed: now y goes.
    let t4 = SystemTime::now();
    write(&dir, "one/main.yaml", &cm("cm-x", "default", "  a: '1'"));
    let one = wait_stack(&a.status, "one", t4).await;
    assert_eq!(one.state, StackState::Applied);
    assert!(fake
        .get("", "configmaps", Some("default"), "cm-y")
        .is_none());
    a.stop().await;
}

#[tokio::test]
async fn failed_stacks_are_retried_without_a_file_change() {
    let fake = FakeKube::start().await;
    let (_t, dir) = tmpdir();
    // "aa" needs a namespace that "zz" creates later in the same pass.
    write(&dir, "aa/main.yaml", &cm("needs-ns", "zz-ns", "  a: b"));
    write(
        &dir,
        "zz/main.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: zz-ns}\n",
    );
    let a = start(config(&fake, &dir, "ctrl-1"));
    let s = wait(&a.status, "first pass", |s| s.passes >= 1).await;
    let StackState::Error { message } = &s.stack("aa").unwrap().state else {
        panic!("{s:#?}")
    };
    assert!(
        message.contains("namespaces \"zz-ns\" not found"),
        "{message}"
    );
    wait(&a.status, "aa applied on retry", |s| {
        s.stack("aa")
            .is_some_and(|x| x.state == StackState::Applied)
    })
    .await;
    assert!(fake
        .get("", "configmaps", Some("zz-ns"), "needs-ns")
        .is_some());
    a.stop().await;
}

#[tokio::test]
async fn empty_or_missing_stack_dirs_at_startup_delete_nothing() {
    let fake = FakeKube::start().await;
    let (_t1, dir1) = tmpdir();
    write(&dir1, "keep/main.yaml", &cm("k1", "default", "  a: b"));
    write(&dir1, "gone/main.yaml", &cm("g1", "default", "  a: b"));
    let a = start(config(&fake, &dir1, "ctrl-1"));
    wait(&a.status, "seeded", |s| {
        ["keep", "gone"]
            .iter()
            .all(|n| s.stack(n).is_some_and(|x| x.state == StackState::Applied))
    })
    .await;
    a.stop().await;

    // A controller restarts with fresh storage: "keep" is an empty directory,
    // "gone" is missing altogether.
    let (_t2, dir2) = tmpdir();
    std::fs::create_dir_all(dir2.join("keep")).unwrap();
    let b = start(config(&fake, &dir2, "ctrl-1"));
    let s = wait(&b.status, "a full pass as leader", |s| {
        s.leader && s.passes >= 1
    })
    .await;
    assert!(s.stacks.is_empty(), "{s:#?}");
    assert!(fake.get("", "configmaps", Some("default"), "k1").is_some());
    assert!(fake.get("", "configmaps", Some("default"), "g1").is_some());
    assert!(record(&fake, "keep").is_some() && record(&fake, "gone").is_some());
    assert!(!fake.requests().iter().any(|r| r.method == "DELETE"));
    b.stop().await;
}

#[tokio::test]
async fn removing_a_stack_while_running_removes_its_objects() {
    let fake = FakeKube::start().await;
    let (_t, dir) = tmpdir();
    write(
        &dir,
        "tmp/main.yaml",
        &format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: tmp-ns}}\n---\n{}---\n\
             apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {{name: tmp-role}}\nrules: []\n",
            cm("c", "tmp-ns", "  a: b")
        ),
    );
    write(&dir, "stay/main.yaml", &cm("s", "default", "  a: b"));
    write(&dir, "emptied/main.yaml", &cm("e", "default", "  a: b"));
    let a = start(config(&fake, &dir, "ctrl-1"));
    wait(&a.status, "applied", |s| {
        ["tmp", "stay", "emptied"]
            .iter()
            .all(|n| s.stack(n).is_some_and(|x| x.state == StackState::Applied))
    })
    .await;

    let t1 = SystemTime::now();
    std::fs::remove_dir_all(dir.join("tmp")).unwrap();
    // A directory emptied while running is a removal too (it held manifests before).
    std::fs::remove_file(dir.join("emptied/main.yaml")).unwrap();
    let tmp = wait_stack(&a.status, "tmp", t1).await;
    assert_eq!(tmp.state, StackState::Pruned, "{tmp:?}");
    assert_eq!(tmp.objects, 3);
    let emptied = wait_stack(&a.status, "emptied", t1).await;
    assert_eq!(emptied.state, StackState::Pruned);
    assert!(fake.get("", "namespaces", None, "tmp-ns").is_none());
    assert!(fake.get("", "configmaps", Some("tmp-ns"), "c").is_none());
    assert!(fake
        .get(
            "rbac.authorization.k8s.io",
            "clusterroles",
            None,
            "tmp-role"
        )
        .is_none());
    assert!(fake.get("", "configmaps", Some("default"), "e").is_none());
    assert!(
        record(&fake, "tmp").is_none(),
        "the record goes with the stack"
    );
    assert!(
        fake.get("", "configmaps", Some("default"), "s").is_some(),
        "other stacks untouched"
    );
    // The namespace went last, after the objects in it.
    let reqs = fake.requests();
    let del = |suffix: &str| {
        reqs.iter()
            .position(|r| r.method == "DELETE" && r.path.ends_with(suffix))
            .unwrap()
    };
    assert!(del("/configmaps/c") < del("/namespaces/tmp-ns"));
    a.stop().await;
}

#[tokio::test]
async fn stacks_removed_by_config_are_pruned_at_startup() {
    let fake = FakeKube::start().await;
    let (_t, dir) = tmpdir();
    write(
        &dir,
        "kube-proxy/kube-proxy.yaml",
        &cm("kp", "kube-system", "  a: b"),
    );
    let a = start(config(&fake, &dir, "ctrl-1"));
    wait(&a.status, "applied", |s| {
        s.stack("kube-proxy")
            .is_some_and(|x| x.state == StackState::Applied)
    })
    .await;
    a.stop().await;

    // The controller disabled kube-proxy and removed its directory before
    // starting the applier: it says so explicitly.
    std::fs::remove_dir_all(dir.join("kube-proxy")).unwrap();
    let mut cfg = config(&fake, &dir, "ctrl-1");
    cfg.removed_stacks = vec!["kube-proxy".into(), "never-existed".into()];
    let b = start(cfg);
    let s = wait(&b.status, "pruned", |s| s.stack("kube-proxy").is_some()).await;
    assert_eq!(s.stack("kube-proxy").unwrap().state, StackState::Pruned);
    assert!(fake
        .get("", "configmaps", Some("kube-system"), "kp")
        .is_none());
    // A stack without a record in the cluster is nothing to report.
    let s = wait(&b.status, "a pass", |s| s.passes >= 1).await;
    assert!(s.stack("never-existed").is_none());
    b.stop().await;
}

fn lease(fake: &FakeKube) -> Value {
    fake.get(
        "coordination.k8s.io",
        "leases",
        Some("kube-system"),
        "mkectl-applier",
    )
    .unwrap()
}

#[tokio::test]
async fn leader_hands_over_when_cancelled() {
    let fake = FakeKube::start().await;
    let (_ta, dir_a) = tmpdir();
    let (_tb, dir_b) = tmpdir();
    write(
        &dir_a,
        "a-stack/main.yaml",
        &cm("from-a", "default", "  a: b"),
    );
    write(
        &dir_b,
        "b-stack/main.yaml",
        &cm("from-b", "default", "  a: b"),
    );
    let a = start(config(&fake, &dir_a, "ctrl-a"));
    wait(&a.status, "a leads and applies", |s| {
        s.leader && s.stack("a-stack").is_some()
    })
    .await;
    let b = start(config(&fake, &dir_b, "ctrl-b"));
    // Absence over time needs a window: during a full lease duration (while
    // A renews) B must neither lead nor apply.
    tokio::time::sleep(LEASE + RETRY).await;
    assert!(!b.status.is_leader());
    assert!(b.status.snapshot().stacks.is_empty());
    assert!(fake
        .get("", "configmaps", Some("default"), "from-b")
        .is_none());
    assert_eq!(lease(&fake)["spec"]["holderIdentity"], "ctrl-a");

    let t0 = Instant::now();
    a.stop().await;
    wait(&b.status, "b takes over", |s| s.leader).await;
    assert!(
        t0.elapsed() < LEASE,
        "released lease taken over in {:?}",
        t0.elapsed()
    );
    wait(&b.status, "b applies", |s| {
        s.stack("b-stack")
            .is_some_and(|x| x.state == StackState::Applied)
    })
    .await;
    assert!(fake
        .get("", "configmaps", Some("default"), "from-b")
        .is_some());
    // B never saw a-stack on its disk, so it leaves it alone.
    assert!(fake
        .get("", "configmaps", Some("default"), "from-a")
        .is_some());
    let l = lease(&fake);
    assert_eq!(l["spec"]["holderIdentity"], "ctrl-b");
    assert!(l["spec"]["leaseTransitions"].as_i64().unwrap() >= 1);
    b.stop().await;
}

#[tokio::test]
async fn a_crashed_leader_is_replaced_after_the_lease_expires() {
    let fake = FakeKube::start().await;
    let (_ta, dir_a) = tmpdir();
    let (_tb, dir_b) = tmpdir();
    write(
        &dir_b,
        "b-stack/main.yaml",
        &cm("from-b", "default", "  a: b"),
    );
    let a = start(config(&fake, &dir_a, "ctrl-a"));
    wait(&a.status, "a leads", |s| s.leader && s.passes >= 1).await;
    let b = start(config(&fake, &dir_b, "ctrl-b"));
    wait(&b.status, "b running", |s| !s.leader).await;
    // A dies without releasing anything.
    a.join.abort();
    let _ = a.join.await;
    let t0 = Instant::now();
    wait(&b.status, "b takes over", |s| s.leader).await;
    let took = t0.elapsed();
    // B waits for the lease to run out (observed locally), not for less.
    assert!(took >= LEASE / 2, "took over after only {took:?}");
    assert!(took <= LEASE * 3, "took over after {took:?}");
    wait(&b.status, "b applies", |s| {
        s.stack("b-stack")
            .is_some_and(|x| x.state == StackState::Applied)
    })
    .await;
    assert_eq!(lease(&fake)["spec"]["holderIdentity"], "ctrl-b");
    b.stop().await;
}
