//! `mkectl worker` end to end on one machine: a controller (etcd +
//! konnectivity server), a worker that joins with a token and runs the real
//! containerd from its generated config plus the konnectivity agent (kubelet,
//! an upstream binary, is left out), and a clean stop that leaves no
//! containerd behind.

mod common;

use std::time::Duration;

use common::join::{ctl_args, readyz, token_create, until, wait_log};
use common::*;

const START: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread")]
async fn worker_runs_containerd_and_agent_and_stops_clean() {
    let c1 = Node::with_address("wn-c1", "127.0.0.1", "");
    let mut p1 = c1.start_controller(&ctl_args(&[]));
    wait_log(&mut p1, "controller ready", START);
    let tok = token_create(&c1, "worker", &[]);

    let w = Node::with_address("wn-w1", "127.0.0.20", "");
    let admin = w.spare_port.to_string();
    let mut pw = w.start_worker_without(
        "kubelet",
        &[
            "--token",
            &tok,
            "--address",
            "127.0.0.20",
            "--labels",
            "mkectl.io/test=yes",
            "--agent-admin-port",
            &admin,
        ],
    );
    wait_log(&mut pw, "worker ready", START);
    let port = c1.konnectivity_admin_port;
    until(
        "agent on the controller",
        Duration::from_secs(20),
        || async move { readyz(port).await == 200 },
    )
    .await;

    // containerd came up from the generated config with its socket in the
    // worker's run dir.
    ctr_answers(&w.run.join("containerd/containerd.sock"));
    let config = std::fs::read_to_string(w.data.join("containerd/config.toml")).unwrap();
    assert!(config.contains(&w.data.join("containerd").display().to_string()));
    let cd_pid = w.child_pid("containerd").expect("containerd pid file");
    assert!(alive(cd_pid));

    // The worker's status socket: its components, the servers its agent
    // is connected to, no etcd, the agent certificate's expiry.
    let status = w.wait_status("worker status ready", START, |s| {
        s["konnectivity"]["connected"] == serde_json::json!(["wn-c1"])
    });
    assert_eq!(status["role"], "worker");
    assert_eq!(status["konnectivity"]["kind"], "servers");
    assert!(status["etcd"].is_null(), "{status:#}");
    assert_eq!(
        component(&status, "containerd")["pid"].as_i64(),
        Some(i64::from(cd_pid))
    );
    assert!(
        status["certificates"]["soonest"]["name"].is_string(),
        "{status:#}"
    );
    let page = w.metrics_page();
    assert!(
        page.contains("mkectl_component_up{component=\"konnectivity-agent\"} 1"),
        "{page}"
    );
    // Nothing to renew here: the worker's certificates come from its join.
    let out = w.cmd(&["certs", "renew", "--all"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("comes from its join"), "{err}");

    signal(pw.pid(), libc::SIGTERM);
    let st = pw.wait_exit(Duration::from_secs(30));
    assert!(st.success(), "{st:?}\n{}", pw.log_text());
    assert!(!alive(cd_pid), "containerd outlived the worker");
    assert!(!w.pid_file("containerd").exists());
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&w.tmp.path().display().to_string()),
        "mounts left under the worker's dirs"
    );
}
