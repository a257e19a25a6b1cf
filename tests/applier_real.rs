//! The manifest applier against the real kube-apiserver (v1.32, built by
//! `packaging/build-upstream.sh`): `mkectl controller` runs the whole control
//! plane and its own applier; the test drops stacks into the controller's
//! `<data-dir>/manifests` and checks the result with kubectl.
//!
//! - the default stacks (bootstrap RBAC, CoreDNS, the opt-in kube-proxy DaemonSet, Calico with its
//!   CRDs) apply by server-side apply and carry the stack label;
//! - a user stack: its CRD is Established before its custom resources (which
//!   come first in the file); field updates follow the file (a dropped key
//!   leaves the object); what leaves the stack is pruned, but never an adopted
//!   object nor one labelled by someone else;
//! - a stack with a broken file, an apiserver rejection (422) or a kind the
//!   apiserver does not serve is never pruned; fixed, it prunes;
//! - a stack removed while running takes its objects with it (namespace last);
//! - a controller restarting with an emptied and a missing stack directory
//!   prunes nothing;
//! - two controllers: only the Lease holder applies; a gracefully stopped
//!   holder hands the lease over and the other controller applies.
//!
//! The fault-injection cases (CRD establishment delays, lease expiry after a
//! crash, request ordering) stay in `tests/applier.rs` against the emulation.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::join::{token_create, token_file};
use common::upstream::{control_plane_bins, CONTROL_PLANE_READY};
use common::*;
use mkectl::applier::{ADOPTED_ANNOTATION, STACK_LABEL};
use mkectl::fsutil;
use serde_json::{json, Value};

/// Bound for anything the applier should do promptly (debounce 500 ms,
/// error retries from 2 s) on a busy 2-core machine.
const WAIT: Duration = Duration::from_secs(60);
/// The applier's default lease renew period (client-go's).
const RENEW: Duration = Duration::from_secs(2);
/// Bound for a controller's graceful stop (the apiserver drains).
const STOP: Duration = Duration::from_secs(150);

// ---------------------------------------------------------------- helpers

/// Byte offset of the end of the last complete line of `ctl`'s log: lines
/// after it were written after this call.
fn mark(ctl: &Controller) -> usize {
    let log = ctl.log_text();
    log.rfind('\n').map(|i| i + 1).unwrap_or(0)
}

fn lines_since(ctl: &Controller, from: usize) -> Vec<String> {
    ctl.log_text()
        .get(from..)
        .unwrap_or("")
        .lines()
        .map(str::to_string)
        .collect()
}

/// Waits until a log line written after `from` satisfies `pred`; returns it.
/// Panics with the log if the process exits or `timeout` passes.
fn wait_line(
    ctl: &mut Controller,
    from: usize,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&str) -> bool,
) -> String {
    let end = Instant::now() + timeout;
    loop {
        if let Some(l) = lines_since(ctl, from).into_iter().find(|l| pred(l)) {
            return l;
        }
        if let Ok(Some(st)) = ctl.child.try_wait() {
            panic!(
                "controller exited ({st}) before {what}; log:\n{}",
                ctl.log_text()
            );
        }
        if Instant::now() > end {
            let applier: Vec<String> = lines_since(ctl, 0)
                .into_iter()
                .filter(|l| l.contains("applier"))
                .collect();
            panic!(
                "no {what} within {timeout:?}; the applier's lines:\n{}\nlog since the mark:\n{}",
                applier.join("\n"),
                lines_since(ctl, from).join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The RFC 3339 timestamp a log line starts with.
fn timestamp(line: &str) -> std::time::SystemTime {
    let ts = line.split_whitespace().next().unwrap_or("");
    humantime::parse_rfc3339(ts).unwrap_or_else(|e| panic!("{ts:?} in {line:?}: {e}"))
}

/// Whether a log line is about `stack` (`stack=x` or `stack="x"`).
fn about(line: &str, stack: &str) -> bool {
    line.contains(&format!(" stack={stack} ")) || line.contains(&format!(" stack=\"{stack}\""))
}

fn applied_line(stack: &str) -> impl Fn(&str) -> bool + '_ {
    move |l| l.contains("stack applied") && about(l, stack)
}

fn error_line(stack: &str) -> impl Fn(&str) -> bool + '_ {
    move |l| l.contains("stack not applied") && about(l, stack)
}

fn removed_line(stack: &str) -> impl Fn(&str) -> bool + '_ {
    move |l| l.contains("stack removed from disk") && about(l, stack)
}

fn wait_applied(ctl: &mut Controller, from: usize, stack: &str) -> String {
    wait_line(
        ctl,
        from,
        &format!("stack {stack} applied"),
        WAIT,
        applied_line(stack),
    )
}

/// Waits for an error of `stack` that mentions `needle` (failed stacks are
/// retried, so an older error may be logged again meanwhile).
fn wait_error(ctl: &mut Controller, from: usize, stack: &str, needle: &str) -> String {
    let is_error = error_line(stack);
    wait_line(
        ctl,
        from,
        &format!("an error for stack {stack} about {needle:?}"),
        WAIT,
        |l| is_error(l) && l.contains(needle),
    )
}

fn write(dir: &Path, rel: &str, contents: &str) {
    let p = dir.join(rel);
    fsutil::ensure_dir(p.parent().unwrap(), 0o700).unwrap();
    fsutil::write_atomic(&p, contents.as_bytes(), 0o644).unwrap();
}

fn cm(name: &str, ns: &str, data: &str) -> String {
    format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  namespace: {ns}\ndata:\n{data}\n")
}

/// `kubectl get <kind> <name> [-n ns] -o json` with managed fields, or None
/// when the apiserver says NotFound.
fn get(node: &Node, kind: &str, ns: Option<&str>, name: &str) -> Option<Value> {
    let mut args = vec!["get", kind, name, "-o", "json", "--show-managed-fields"];
    if let Some(ns) = ns {
        args.extend(["-n", ns]);
    }
    let out = node.kubectl(&args);
    if out.status.success() {
        return Some(serde_json::from_slice(&out.stdout).unwrap());
    }
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("NotFound"), "kubectl {args:?}: {err}");
    None
}

fn must_get(node: &Node, kind: &str, ns: Option<&str>, name: &str) -> Value {
    get(node, kind, ns, name).unwrap_or_else(|| panic!("{kind} {ns:?}/{name} not found"))
}

/// Waits (bounded) until the object is gone; namespaces and CRDs go through
/// finalizers first.
fn wait_gone(node: &Node, kind: &str, ns: Option<&str>, name: &str) {
    wait_for(&format!("{kind} {ns:?}/{name} gone"), WAIT, || {
        get(node, kind, ns, name).is_none().then_some(())
    });
}

fn label(obj: &Value) -> Option<&str> {
    obj["metadata"]["labels"][STACK_LABEL].as_str()
}

/// Written by server-side apply with field manager `mkectl`.
fn applied_by_mkectl(obj: &Value) -> bool {
    obj["metadata"]["managedFields"]
        .as_array()
        .is_some_and(|m| {
            m.iter()
                .any(|f| f["manager"] == "mkectl" && f["operation"] == "Apply")
        })
}

/// Labelled for `stack` and server-side applied by mkectl.
fn assert_ours(obj: &Value, stack: &str) {
    assert_eq!(label(obj), Some(stack), "{obj:#}");
    assert!(applied_by_mkectl(obj), "not applied by mkectl: {obj:#}");
}

/// The resource types recorded for `stack` (its record ConfigMap), or None.
fn record(node: &Node, stack: &str) -> Option<Vec<Value>> {
    let cm = get(
        node,
        "configmap",
        Some("kube-system"),
        &format!("mkectl-stack-{stack}"),
    )?;
    Some(serde_json::from_str(cm["data"]["resources"].as_str().unwrap()).unwrap())
}

fn create_from(node: &Node, name: &str, manifest: &Value) {
    let f = node.tmp.path().join(format!("{name}.json"));
    std::fs::write(&f, manifest.to_string()).unwrap();
    node.kubectl_ok(&["create", "-f", f.to_str().unwrap()]);
}

fn lease(node: &Node) -> Value {
    must_get(node, "lease", Some("kube-system"), "mkectl-applier")
}

/// Stops a controller with SIGTERM and waits for its graceful exit.
fn stop(ctl: &mut Controller) {
    signal(ctl.pid(), libc::SIGTERM);
    let st = ctl.wait_exit(STOP);
    assert!(
        st.success(),
        "graceful stop failed ({st}):\n{}",
        ctl.log_text()
    );
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
    format!("apiVersion: example.com/v1\nkind: Widget\nmetadata: {{name: {name}, namespace: demo}}\nspec: {{size: 3}}\n")
}

const DEMO_NS: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: demo}\n";
const DEMO_ROLE: &str = "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {name: \"demo:reader\"}\nrules: []\n";

fn docs(parts: &[&str]) -> String {
    parts.join("---\n")
}

// ------------------------------------------------------------------ tests

/// Default stacks, then a user stack through its whole life on one
/// controller, then a restart with emptied / missing stack directories.
#[test]
fn default_and_user_stacks_apply_prune_and_never_prune_on_errors() {
    let Some(bin) = control_plane_bins() else {
        return;
    };
    let t_start = Instant::now();
    // The kube-proxy DaemonSet is opt-in (the host process is the default):
    // opted in here so every default stack is exercised.
    let [kcm, scheduler] = common::free_ports();
    let node = Node::with_address(
        "ar-one",
        "127.0.0.1",
        &format!(
            "{}  addons:\n    kubeProxy:\n      enabled: true\n",
            common::upstream::kube_ports_spec(kcm, scheduler)
        ),
    );
    let manifests = node.data.join("manifests");
    let mut ctl = node.start_full_controller(&bin, &[]);

    // --- 1. Default stacks: every one applied by server-side apply.
    for stack in ["bootstrap-rbac", "coredns", "kube-proxy", "calico"] {
        wait_applied(&mut ctl, 0, stack);
        assert!(record(&node, stack).is_some(), "no record for {stack}");
    }
    let dns = must_get(&node, "service", Some("kube-system"), "kube-dns");
    assert_ours(&dns, "coredns");
    assert_eq!(dns["spec"]["clusterIP"], "10.96.0.10");
    assert_ours(
        &must_get(&node, "deployment", Some("kube-system"), "coredns"),
        "coredns",
    );
    let kp = must_get(&node, "configmap", Some("kube-system"), "kube-proxy");
    assert_ours(&kp, "kube-proxy");
    assert!(
        kp["data"]["kubeconfig.conf"]
            .as_str()
            .unwrap()
            .contains(&format!("https://127.0.0.1:{}", node.api_port)),
        "kube-proxy talks to this apiserver: {kp:#}"
    );
    assert_ours(
        &must_get(&node, "daemonset", Some("kube-system"), "kube-proxy"),
        "kube-proxy",
    );
    assert_ours(
        &must_get(&node, "daemonset", Some("kube-system"), "calico-node"),
        "calico",
    );
    let crds: Value = serde_json::from_str(&node.kubectl_ok(&[
        "get",
        "crd",
        "-l",
        &format!("{STACK_LABEL}=calico"),
        "-o",
        "json",
    ]))
    .unwrap();
    let crds = crds["items"].as_array().unwrap();
    assert_eq!(crds.len(), 20, "Calico's CRDs");
    for crd in crds {
        let established = crd["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["type"] == "Established" && c["status"] == "True");
        assert!(established, "{}", crd["metadata"]["name"]);
    }
    // Calico's custom resources are served by the real apiserver.
    node.kubectl_ok(&["get", "ippools.crd.projectcalico.org"]);
    let bindings = node.kubectl_ok(&[
        "get",
        "clusterrolebindings",
        "-l",
        &format!("{STACK_LABEL}=bootstrap-rbac"),
        "-o",
        "name",
    ]);
    assert_eq!(bindings.lines().count(), 4, "{bindings}");
    let default_passes = t_start.elapsed();

    // --- 2. A user stack: custom resources before their CRD, a ConfigMap
    // before its Namespace. Two objects predate it: "legacy" (the stack
    // adopts it) and "foreign" (carries the stack label, never applied by
    // mkectl).
    create_from(
        &node,
        "legacy",
        &json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "legacy", "namespace": "default"}, "data": {"from": "kubectl"}}),
    );
    create_from(
        &node,
        "foreign",
        &json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "foreign", "namespace": "default", "labels": {STACK_LABEL: "demo"}},
            "data": {"q": "1"}}),
    );
    let m = mark(&ctl);
    write(
        &manifests,
        "demo/main.yaml",
        &docs(&[
            &widget("w1"),
            &widget("w2"),
            &cm("a", "demo", "  k1: v1\n  k2: v2"),
            &cm("b", "demo", "  x: z"),
            &cm("legacy", "default", "  from: stack"),
            DEMO_NS,
            WIDGET_CRD,
            DEMO_ROLE,
        ]),
    );
    let line = wait_applied(&mut ctl, m, "demo");
    assert!(line.contains("objects=8"), "{line}");
    // The first pass succeeded: the CRD was Established (and its kind
    // discovered) before the custom resources were applied.
    assert!(
        !lines_since(&ctl, m).iter().any(|l| error_line("demo")(l)),
        "the first apply of demo failed:\n{}",
        lines_since(&ctl, m).join("\n")
    );
    for w in ["w1", "w2"] {
        let obj = must_get(&node, "widgets.example.com", Some("demo"), w);
        assert_ours(&obj, "demo");
        assert_eq!(obj["spec"]["size"], 3);
    }
    let a = must_get(&node, "configmap", Some("demo"), "a");
    assert_ours(&a, "demo");
    assert_eq!(a["data"], json!({"k1": "v1", "k2": "v2"}));
    assert_ours(&must_get(&node, "namespace", None, "demo"), "demo");
    assert_ours(&must_get(&node, "clusterrole", None, "demo:reader"), "demo");
    assert_ours(&must_get(&node, "crd", None, "widgets.example.com"), "demo");
    let legacy = must_get(&node, "configmap", Some("default"), "legacy");
    assert_eq!(legacy["data"]["from"], "stack", "the stack owns its fields");
    assert_eq!(
        legacy["metadata"]["annotations"][ADOPTED_ANNOTATION], "true",
        "{legacy:#}"
    );
    let mut rec: Vec<String> = record(&node, "demo")
        .unwrap()
        .iter()
        .map(|t| {
            format!(
                "{}/{}",
                t["group"].as_str().unwrap(),
                t["kind"].as_str().unwrap()
            )
        })
        .collect();
    rec.sort();
    assert_eq!(
        rec,
        [
            "/ConfigMap",
            "/Namespace",
            "apiextensions.k8s.io/CustomResourceDefinition",
            "example.com/Widget",
            "rbac.authorization.k8s.io/ClusterRole"
        ]
    );

    // --- 3. Update a (k2 dropped), drop b, w2 and the adopted legacy.
    let rv_a = a["metadata"]["resourceVersion"].clone();
    let m = mark(&ctl);
    write(
        &manifests,
        "demo/main.yaml",
        &docs(&[
            &widget("w1"),
            &cm("a", "demo", "  k1: v1-new"),
            DEMO_NS,
            WIDGET_CRD,
            DEMO_ROLE,
        ]),
    );
    let line = wait_applied(&mut ctl, m, "demo");
    assert!(
        line.contains("objects=5") && line.contains("pruned=2"),
        "{line}"
    );
    let a = must_get(&node, "configmap", Some("demo"), "a");
    assert_eq!(
        a["data"],
        json!({"k1": "v1-new"}),
        "k2 left the manifest, so server-side apply removed it"
    );
    assert_ne!(a["metadata"]["resourceVersion"], rv_a);
    assert!(
        get(&node, "configmap", Some("demo"), "b").is_none(),
        "b pruned"
    );
    assert!(
        get(&node, "widgets.example.com", Some("demo"), "w2").is_none(),
        "w2 pruned"
    );
    assert!(get(&node, "widgets.example.com", Some("demo"), "w1").is_some());
    assert!(
        get(&node, "configmap", Some("default"), "legacy").is_some(),
        "adopted, so never pruned"
    );
    assert!(
        get(&node, "configmap", Some("default"), "foreign").is_some(),
        "labelled by someone else, so never pruned"
    );

    // --- 4. Errors never prune. (a) A broken file next to main.yaml, then
    // w1 leaves main.yaml: the stack does not parse, w1 stays.
    let m = mark(&ctl);
    write(&manifests, "demo/zz-broken.yaml", "kind: [unclosed\n");
    wait_error(&mut ctl, m, "demo", "zz-broken.yaml: document index 0");
    let m = mark(&ctl);
    let without_w1 = [
        cm("a", "demo", "  k1: v1-new"),
        DEMO_NS.to_string(),
        WIDGET_CRD.to_string(),
        DEMO_ROLE.to_string(),
    ];
    let without_w1: Vec<&str> = without_w1.iter().map(String::as_str).collect();
    write(&manifests, "demo/main.yaml", &docs(&without_w1));
    wait_error(&mut ctl, m, "demo", "zz-broken.yaml: document index 0");
    assert!(
        get(&node, "widgets.example.com", Some("demo"), "w1").is_some(),
        "a parse error must not prune"
    );

    // (b) The apiserver rejects an object (invalid name: 422 Invalid).
    let mut with_bad = without_w1.clone();
    let bad = cm("Bad_Name", "demo", "  a: b");
    with_bad.push(&bad);
    let m = mark(&ctl);
    write(&manifests, "demo/main.yaml", &docs(&with_bad));
    wait_error(&mut ctl, m, "demo", "zz-broken.yaml: document index 0");
    let m = mark(&ctl);
    std::fs::remove_file(manifests.join("demo/zz-broken.yaml")).unwrap();
    let line = wait_error(
        &mut ctl,
        m,
        "demo",
        "main.yaml: document index 4: applying ConfigMap demo/Bad_Name",
    );
    assert!(!line.contains("zz-broken"), "{line}");
    assert!(line.contains("Invalid") || line.contains("422"), "{line}");
    assert!(
        get(&node, "widgets.example.com", Some("demo"), "w1").is_some(),
        "an apply error must not prune"
    );

    // (c) A kind the apiserver does not serve.
    let gadget = "apiVersion: nope.example.com/v1\nkind: Gadget\nmetadata: {name: g}\n";
    let mut with_gadget = without_w1.clone();
    with_gadget.push(gadget);
    let m = mark(&ctl);
    write(&manifests, "demo/main.yaml", &docs(&with_gadget));
    let line = wait_error(&mut ctl, m, "demo", "kind Gadget in nope.example.com/v1");
    assert!(line.contains("main.yaml: document index 4"), "{line}");
    assert!(
        get(&node, "widgets.example.com", Some("demo"), "w1").is_some(),
        "an unknown kind must not prune"
    );

    // (d) Fixed: now w1 goes.
    let m = mark(&ctl);
    write(&manifests, "demo/main.yaml", &docs(&without_w1));
    let line = wait_applied(&mut ctl, m, "demo");
    assert!(line.contains("pruned=1"), "{line}");
    assert!(get(&node, "widgets.example.com", Some("demo"), "w1").is_none());

    // --- 5. The stack directory removed while running: its objects go
    // (the namespace after what is in it), the adopted and the foreign
    // object stay, and so does every other stack.
    let m = mark(&ctl);
    std::fs::remove_dir_all(manifests.join("demo")).unwrap();
    let line = wait_line(
        &mut ctl,
        m,
        "stack demo removed",
        WAIT,
        removed_line("demo"),
    );
    assert!(line.contains("objects=4"), "{line}");
    wait_gone(&node, "configmap", Some("demo"), "a");
    wait_gone(&node, "namespace", None, "demo");
    wait_gone(&node, "crd", None, "widgets.example.com");
    assert!(get(&node, "clusterrole", None, "demo:reader").is_none());
    assert!(record(&node, "demo").is_none(), "the record goes with it");
    assert!(get(&node, "configmap", Some("default"), "legacy").is_some());
    assert!(get(&node, "configmap", Some("default"), "foreign").is_some());
    assert!(get(&node, "service", Some("kube-system"), "kube-dns").is_some());

    // --- 6. Restart with one stack directory emptied and one missing: the
    // new applier never saw them with manifests, so nothing is deleted.
    let m = mark(&ctl);
    write(&manifests, "keep/main.yaml", &cm("k1", "default", "  a: b"));
    write(&manifests, "gone/main.yaml", &cm("g1", "default", "  a: b"));
    wait_applied(&mut ctl, m, "keep");
    wait_applied(&mut ctl, m, "gone");
    stop(&mut ctl);
    std::fs::remove_file(manifests.join("keep/main.yaml")).unwrap();
    std::fs::remove_dir_all(manifests.join("gone")).unwrap();
    let t_restart = Instant::now();
    let mut ctl = node.start_full_controller(&bin, &[]);
    let restart = t_restart.elapsed();
    wait_line(&mut ctl, 0, "the applier lease", WAIT, |l| {
        l.contains("acquired applier lease")
    });
    // Passes run one after another: once a stack written now is applied,
    // the first full pass (with its removals) has finished.
    let m = mark(&ctl);
    write(
        &manifests,
        "probe/main.yaml",
        &cm("p1", "default", "  a: b"),
    );
    wait_applied(&mut ctl, m, "probe");
    assert!(get(&node, "configmap", Some("default"), "k1").is_some());
    assert!(get(&node, "configmap", Some("default"), "g1").is_some());
    assert!(record(&node, "keep").is_some() && record(&node, "gone").is_some());
    let log = ctl.log_text();
    let deleted = |l: &&str| {
        l.contains("stack removed from disk")
            || l.contains(": pruned ")
            || (l.contains("stack applied") && !l.contains("pruned=0"))
    };
    assert!(
        !log.lines().any(|l| deleted(&l)),
        "the restarted applier deleted something:\n{log}"
    );
    stop(&mut ctl);
    println!(
        "applier_real single controller: default stacks applied {:.1}s after start, restart to ready {:.1}s, whole test {:.1}s",
        default_passes.as_secs_f64(),
        restart.as_secs_f64(),
        t_start.elapsed().as_secs_f64()
    );
}

/// Two controllers share one cluster; only the Lease holder applies, even
/// stacks that exist only on the other controller's disk. When the holder
/// stops gracefully it releases the lease and the other one takes over.
#[test]
fn two_controllers_only_the_lease_holder_applies() {
    let Some(bin) = control_plane_bins() else {
        return;
    };
    let t_start = Instant::now();
    let c1 = Node::control_plane_node("ar-c1", "127.0.0.1");
    let mut p1 = c1.start_full_controller(&bin, &[]);
    wait_line(&mut p1, 0, "c1 holds the lease", WAIT, |l| {
        l.contains("acquired applier lease")
    });
    let ctok = token_create(&c1, "controller", &[]);
    let ctok_file = token_file(&c1, "controller.token", &ctok);
    let c2 = Node::control_plane_node("ar-c2", "127.0.0.2");
    let mut p2 = c2.start_full_controller(&bin, &["--token-file", ctok_file.to_str().unwrap()]);
    wait_line(&mut p2, 0, "c2's applier waiting", WAIT, |l| {
        l.contains("applier started; waiting for the lease")
    });
    // Both apiservers serve the same cluster.
    c2.kubectl_until(
        "c2's apiserver sees c1's lease",
        CONTROL_PLANE_READY,
        &["get", "lease", "-n", "kube-system", "mkectl-applier"],
    );
    assert_eq!(lease(&c1)["spec"]["holderIdentity"], "ar-c1");

    // A stack only on c2's disk, then one only on c1's.
    write(
        &c2.data.join("manifests"),
        "only-c2/main.yaml",
        &cm("from-c2", "default", "  a: b"),
    );
    let m1 = mark(&p1);
    write(
        &c1.data.join("manifests"),
        "only-c1/main.yaml",
        &cm("from-c1", "default", "  a: b"),
    );
    wait_applied(&mut p1, m1, "only-c1");
    assert_ours(
        &must_get(&c2, "configmap", Some("default"), "from-c1"),
        "only-c1",
    );
    // Absence needs a window: while c1 renews the lease at least twice
    // (c2 saw its file long before: its debounce is 500 ms), c2 applies
    // nothing at all.
    let renew_time = |n: &Node| lease(n)["spec"]["renewTime"].as_str().unwrap().to_string();
    let mut seen = vec![renew_time(&c2)];
    wait_for("two lease renewals by c1", RENEW * 10, || {
        let l = lease(&c2);
        assert_eq!(l["spec"]["holderIdentity"], "ar-c1", "{l:#}");
        let r = l["spec"]["renewTime"].as_str().unwrap().to_string();
        if !seen.contains(&r) {
            seen.push(r);
        }
        (seen.len() >= 3).then_some(())
    });
    assert!(
        get(&c1, "configmap", Some("default"), "from-c2").is_none(),
        "c2 applied without the lease"
    );
    let c2_log = p2.log_text();
    assert!(
        !c2_log.contains("acquired applier lease") && !c2_log.contains("stack applied"),
        "c2 acted as the applier leader:\n{c2_log}"
    );

    // --- Handover: c1 stops gracefully and releases the lease. With two
    // etcd members, c1's etcd is needed for quorum, so c1 comes back, this
    // time without its applier; c2 then holds the lease and applies.
    let m2 = mark(&p2);
    stop(&mut p1);
    let released = p1
        .log_text()
        .lines()
        .find(|l| l.contains("released applier lease"))
        .unwrap_or_else(|| panic!("c1 did not release the lease:\n{}", p1.log_text()))
        .to_string();
    let _p1 = c1.start_full_controller(&bin, &["--disable-components", "applier"]);
    let acquired = wait_line(
        &mut p2,
        m2,
        "c2 takes the lease",
        CONTROL_PLANE_READY,
        |l| l.contains("acquired applier lease"),
    );
    let takeover = timestamp(&acquired)
        .duration_since(timestamp(&released))
        .unwrap_or_default();
    wait_applied(&mut p2, m2, "only-c2");
    assert_ours(
        &must_get(&c1, "configmap", Some("default"), "from-c2"),
        "only-c2",
    );
    // c2 never saw only-c1 on its disk: it leaves it alone.
    assert!(get(&c2, "configmap", Some("default"), "from-c1").is_some());
    let l = lease(&c2);
    assert_eq!(l["spec"]["holderIdentity"], "ar-c2", "{l:#}");
    assert!(
        l["spec"]["leaseTransitions"].as_i64().unwrap() >= 1,
        "{l:#}"
    );
    println!(
        "applier_real two controllers: c1 released the lease, c2 acquired it {:.1}s later; whole test {:.1}s",
        takeover.as_secs_f64(),
        t_start.elapsed().as_secs_f64()
    );
}
