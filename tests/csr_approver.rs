//! The kubelet-serving CSR approver's list/watch/approve loop against a small
//! fake of the three apiserver endpoints it uses (CSR list + watch, Node get,
//! CSR approval patch), served over plain HTTP on 127.0.0.1. The decision
//! rules themselves are unit-tested in `src/components/csr_approver.rs`; this
//! proves the wiring: pending CSRs are decided and patched with the right
//! condition, new CSRs arriving on the watch are handled, ignored and pending
//! ones are left alone, and the loop stops cleanly.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch};
use axum::{Json, Router};
use base64::Engine;
use mkectl::components::csr_approver::{CsrApprover, CsrApproverSettings, KUBELET_SERVING_SIGNER};
use mkectl::components::Component;
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SanType};
use serde_json::{json, Value};
use tokio::sync::mpsc;

const NODE: &str = "worker-1";
const NODE_IP: &str = "192.0.2.21";

#[derive(Default)]
struct Fake {
    csrs: Vec<Value>,
    patches: Vec<(String, Value)>,
    watchers: Vec<mpsc::UnboundedSender<Value>>,
    /// CSRs that exist only as watch events (never listed).
    watch_only: Vec<Value>,
    lists: usize,
}

type Shared = Arc<Mutex<Fake>>;

fn csr_pem(cn: &str, sans: Vec<SanType>) -> String {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn.push(DnType::OrganizationName, "system:nodes");
    params.distinguished_name = dn;
    params.subject_alt_names = sans;
    params.serialize_request(&key).unwrap().pem().unwrap()
}

fn csr(name: &str, node: &str, signer: &str, sans: Vec<SanType>, conditions: Value) -> Value {
    let user = format!("system:node:{node}");
    let pem = csr_pem(&user, sans);
    json!({
        "apiVersion": "certificates.k8s.io/v1",
        "kind": "CertificateSigningRequest",
        "metadata": { "name": name, "resourceVersion": "5" },
        "spec": {
            "request": base64::engine::general_purpose::STANDARD.encode(pem),
            "signerName": signer,
            "username": user,
            "groups": ["system:nodes", "system:authenticated"],
            "usages": ["digital signature", "server auth"],
        },
        "status": { "conditions": conditions },
    })
}

fn dns(s: &str) -> SanType {
    SanType::DnsName(s.try_into().unwrap())
}

fn ip(s: &str) -> SanType {
    SanType::IpAddress(s.parse().unwrap())
}

async fn list_or_watch(
    State(fake): State<Shared>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    assert_eq!(
        q.get("fieldSelector").map(String::as_str),
        Some(format!("spec.signerName={KUBELET_SERVING_SIGNER}").as_str())
    );
    if q.get("watch").map(String::as_str) == Some("true") {
        let (tx, rx) = mpsc::unbounded_channel::<Value>();
        fake.lock().unwrap().watchers.push(tx);
        let stream = futures::stream::unfold(rx, |mut rx| async move {
            let ev = rx.recv().await?;
            let line = format!("{ev}\n");
            Some((Ok::<_, std::io::Error>(line), rx))
        });
        return Response::builder()
            .header("content-type", "application/json")
            .body(Body::from_stream(stream))
            .unwrap();
    }
    let mut f = fake.lock().unwrap();
    f.lists += 1;
    Json(json!({
        "apiVersion": "certificates.k8s.io/v1",
        "kind": "CertificateSigningRequestList",
        "metadata": { "resourceVersion": "10" },
        "items": f.csrs,
    }))
    .into_response()
}

async fn get_node(Path(name): Path<String>) -> Response {
    if name == NODE {
        Json(json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": { "name": NODE },
            "status": { "addresses": [
                { "type": "InternalIP", "address": NODE_IP },
                { "type": "Hostname", "address": NODE },
            ] },
        }))
        .into_response()
    } else {
        (
            StatusCode::NOT_FOUND,
            Json(json!({
                "apiVersion": "v1", "kind": "Status", "status": "Failure",
                "reason": "NotFound", "code": 404,
                "message": format!("nodes \"{name}\" not found"),
            })),
        )
            .into_response()
    }
}

async fn approve(
    State(fake): State<Shared>,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let patch: Value = serde_json::from_slice(&body).unwrap();
    let mut f = fake.lock().unwrap();
    f.patches.push((name.clone(), patch.clone()));
    // Like the apiserver, store the decision: a relist then sees it decided.
    let Fake {
        csrs, watch_only, ..
    } = &mut *f;
    match csrs
        .iter_mut()
        .chain(watch_only.iter_mut())
        .find(|c| c["metadata"]["name"] == name.as_str())
    {
        Some(obj) => {
            obj["status"] = patch["status"].clone();
            Json(obj.clone()).into_response()
        }
        None => Json(json!({
            "metadata": { "name": name },
            "spec": { "request": "", "signerName": KUBELET_SERVING_SIGNER },
            "status": patch["status"],
        }))
        .into_response(),
    }
}

async fn serve(fake: Shared) -> u16 {
    let app = Router::new()
        .route(
            "/apis/certificates.k8s.io/v1/certificatesigningrequests",
            get(list_or_watch),
        )
        .route(
            "/apis/certificates.k8s.io/v1/certificatesigningrequests/{name}/approval",
            patch(approve),
        )
        .route("/api/v1/nodes/{name}", get(get_node))
        .with_state(fake);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    port
}

fn condition_of(patch: &Value) -> (String, String) {
    let conds = patch["status"]["conditions"].as_array().unwrap();
    let last = conds.last().unwrap();
    assert_eq!(last["status"], "True");
    (
        last["type"].as_str().unwrap().to_string(),
        last["message"].as_str().unwrap_or_default().to_string(),
    )
}

async fn wait_until(what: &str, fake: &Shared, f: impl Fn(&Fake) -> bool) {
    let end = tokio::time::Instant::now() + Duration::from_secs(20);
    while !f(&fake.lock().unwrap()) {
        assert!(
            tokio::time::Instant::now() < end,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approver_decides_listed_and_watched_csrs() {
    let fake: Shared = Arc::default();
    {
        let mut f = fake.lock().unwrap();
        f.csrs = vec![
            csr(
                "good",
                NODE,
                KUBELET_SERVING_SIGNER,
                vec![dns(NODE), ip(NODE_IP)],
                json!([]),
            ),
            csr(
                "foreign-ip",
                NODE,
                KUBELET_SERVING_SIGNER,
                vec![dns(NODE), ip("192.0.2.99")],
                json!([]),
            ),
            csr(
                "no-node-yet",
                "worker-9",
                KUBELET_SERVING_SIGNER,
                vec![dns("worker-9")],
                json!([]),
            ),
            csr(
                "already",
                NODE,
                KUBELET_SERVING_SIGNER,
                vec![dns(NODE)],
                json!([{ "type": "Approved", "status": "True" }]),
            ),
            csr(
                "client-cert",
                NODE,
                "kubernetes.io/kube-apiserver-client-kubelet",
                vec![],
                json!([]),
            ),
        ];
    }
    let port = serve(fake.clone()).await;
    let tmp = tempfile::tempdir().unwrap();
    let kubeconfig = tmp.path().join("admin.conf");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://127.0.0.1:{port}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: admin\ncurrent-context: fake\nusers:\n- name: admin\n  user:\n    token: fake-token\n"
        ),
    )
    .unwrap();

    let mut approver = CsrApprover::new(CsrApproverSettings {
        kubeconfig,
        resync: Duration::from_secs(1),
    });
    approver.init().await.unwrap();
    approver.start().await.unwrap();
    let end = tokio::time::Instant::now() + Duration::from_secs(20);
    while let Err(e) = approver.ready().await {
        assert!(tokio::time::Instant::now() < end, "not ready: {e}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    wait_until("the two decidable CSRs patched", &fake, |f| {
        f.patches.len() >= 2
    })
    .await;
    // Decided, pending and ignored CSRs stay untouched across relists.
    let lists = fake.lock().unwrap().lists;
    wait_until("two more relists", &fake, |f| f.lists >= lists + 2).await;
    {
        let f = fake.lock().unwrap();
        let names: Vec<&str> = f.patches.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names.len(), 2, "each CSR is patched once: {names:?}");
        let by_name: HashMap<_, _> = f.patches.iter().cloned().collect();
        let (t, m) = condition_of(&by_name["good"]);
        assert_eq!(t, "Approved", "{m}");
        let (t, m) = condition_of(&by_name["foreign-ip"]);
        assert_eq!(t, "Denied");
        assert!(m.contains("192.0.2.99"), "{m}");
    }

    // A CSR that arrives on the watch is decided without a relist. It is
    // re-sent (with its stored state) to whichever watch is open, so an event
    // sent while the approver is between watches is not lost.
    let late = csr(
        "late",
        NODE,
        KUBELET_SERVING_SIGNER,
        vec![dns(NODE)],
        json!([]),
    );
    fake.lock().unwrap().watch_only.push(late);
    let end = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        {
            let f = fake.lock().unwrap();
            if f.patches.iter().any(|(n, _)| n == "late") {
                break;
            }
            for w in &f.watchers {
                let _ = w.send(json!({ "type": "ADDED", "object": f.watch_only[0] }));
            }
        }
        assert!(
            tokio::time::Instant::now() < end,
            "the watched CSR was never decided"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Its decision is stored; events that carry it are skipped.
    for _ in 0..3 {
        {
            let f = fake.lock().unwrap();
            for w in &f.watchers {
                let _ = w.send(json!({ "type": "MODIFIED", "object": f.watch_only[0] }));
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    {
        let f = fake.lock().unwrap();
        let (_, p) = f.patches.iter().find(|(n, _)| n == "late").unwrap();
        assert_eq!(condition_of(p).0, "Approved");
        assert_eq!(f.patches.len(), 3, "{:?}", f.patches);
    }
    let counts = approver.counts();
    assert!(counts.approved >= 2 && counts.denied >= 1, "{counts:?}");

    tokio::time::timeout(Duration::from_secs(10), approver.stop())
        .await
        .expect("stop finishes")
        .unwrap();
}
