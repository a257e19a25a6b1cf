//! HA with the real control plane (kube-apiserver, kube-controller-manager,
//! kube-scheduler v1.32 from `packaging/build-upstream.sh`) and Debian's
//! etcd: three controllers on their own loopback addresses (127.0.0.2/3/4),
//! the second and third joining with a controller token.
//!
//! - kubectl works against each controller's apiserver with one admin
//!   credential, and all three serve the same data;
//! - kube-controller-manager and kube-scheduler hold one Lease each across
//!   the three: exactly one process of each reports itself leader
//!   (`leader_election_master_status` on its own metrics port) and the Lease
//!   names a holder; the first controller switched leader election on when
//!   the second joined;
//! - kill -9 of the controller holding a Lease (mkectl; its children die
//!   with it): a survivor acquires the Lease within client-go's bound for
//!   the lease duration and retry period in force (measured from the kill
//!   and printed), never before the old holder's lease expired; kubectl
//!   against the survivors works through the whole takeover; etcd keeps
//!   quorum (linearizable writes through both survivors);
//! - the killed controller comes back with its data dir and no token,
//!   rejoins etcd, serves kubectl, and stands by: still one leader each.
//!
//! The Leases may sit on different controllers; the kill is repeated for
//! the scheduler's holder when the first kill did not take both, so both
//! takeovers are proven in every run.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant, SystemTime};

use common::join::{etcd_healthy, members, token_create, token_file};
use common::upstream::{
    control_plane_bins, kube_ports_spec, through_etcd_leader_change, wait_ready,
    CONTROL_PLANE_READY, ETCD_LEADER_CHANGED,
};
use common::*;
use mkectl::components::kube_common::{parse_args_file, parse_go_duration, Flags};

const KCM: &str = "kube-controller-manager";
const SCHEDULER: &str = "kube-scheduler";
/// The Leases both use (named after the component, in kube-system).
const LEASES: [&str; 2] = [KCM, SCHEDULER];
/// client-go's defaults, which apply unless mkectl or extraArgs set the
/// `--leader-elect-*` flags.
const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(15);
const DEFAULT_RETRY_PERIOD: Duration = Duration::from_secs(2);
/// client-go waits a jittered retry period, up to (1 + 1.2) times it,
/// between a candidate's attempts.
const MAX_JITTERED_RETRY: f64 = 2.2;
/// Scheduling and API latency of three control planes on 2 busy cores.
const SLACK: Duration = Duration::from_secs(2);
/// Children of a killed mkectl die with it (PDEATHSIG).
const CHILDREN_GONE: Duration = Duration::from_secs(10);

/// One controller: its node and the secure ports its controller-manager
/// and scheduler use (upstream's fixed 10257/10259 cannot be shared by
/// three on one machine, so each gets free ones through `extraArgs`).
struct Ctl {
    node: Node,
    ports: [u16; 2],
    address: &'static str,
}

impl Ctl {
    fn port(&self, component: &str) -> u16 {
        self.ports[usize::from(component == SCHEDULER)]
    }

    fn api_url(&self) -> String {
        format!("https://{}:{}", self.address, self.node.api_port)
    }

    /// The final flags mkectl runs `component` with (its args file).
    fn flags(&self, component: &str) -> Flags {
        let file = self
            .node
            .data
            .join("config")
            .join(format!("{component}.args"));
        let text =
            std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        Flags::parse_args(&parse_args_file(&text)).unwrap()
    }
}

/// Three controllers on 127.0.0.2..4, each with free kcm/scheduler ports
/// (distinct from every port the nodes pick).
fn three_controllers() -> Vec<Ctl> {
    let ports: [u16; 6] = common::free_ports();
    let port = |i: usize| ports[i];
    let ctls = [
        ("c1", "127.0.0.2"),
        ("c2", "127.0.0.3"),
        ("c3", "127.0.0.4"),
    ]
    .iter()
    .enumerate()
    .map(|(i, (name, address))| {
        let ports = [port(2 * i), port(2 * i + 1)];
        let spec = kube_ports_spec(ports[0], ports[1]);
        Ctl {
            node: Node::with_address(name, address, &spec),
            ports,
            address,
        }
    })
    .collect();
    ctls
}

/// `kubectl` with `admin` against the apiserver of `at`.
fn kubectl_at(admin: &Path, at: &Ctl, args: &[&str]) -> Output {
    Command::new("kubectl")
        .env_remove("KUBECONFIG")
        .arg("--kubeconfig")
        .arg(admin)
        .arg("--server")
        .arg(at.api_url())
        .arg("--request-timeout=20s")
        .args(args)
        .output()
        .expect("kubectl runs")
}

/// [`kubectl_at`] through etcd's transient "leader changed"
/// ([`through_etcd_leader_change`]); also returns how many retries it took.
fn kubectl_at_through_leader_change(admin: &Path, at: &Ctl, args: &[&str]) -> (Output, usize) {
    through_etcd_leader_change(|| kubectl_at(admin, at, args))
}

fn stdout_ok(what: &str, out: &Output) -> String {
    assert!(
        out.status.success(),
        "{what}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn kubectl_until(admin: &Path, at: &Ctl, what: &str, args: &[&str]) -> String {
    wait_for(what, CONTROL_PLANE_READY, || {
        let out = kubectl_at(admin, at, args);
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    })
}

/// Whether `component` on `at` says it leads its Lease, from its own
/// `/metrics` (`leader_election_master_status`), read as the admin (the
/// port authorizes through the apiserver) trusting its self-signed
/// certificate. None when it does not answer.
fn is_leader(admin: &Path, at: &Ctl, component: &str) -> Option<bool> {
    let cert = at
        .node
        .data
        .join(component)
        .join("serving")
        .join(format!("{component}.crt"));
    let out = Command::new("kubectl")
        .env_remove("KUBECONFIG")
        .arg("--kubeconfig")
        .arg(admin)
        .arg("--server")
        .arg(format!("https://127.0.0.1:{}", at.port(component)))
        .arg("--certificate-authority")
        .arg(cert)
        .args(["--request-timeout=10s", "get", "--raw", "/metrics"])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let series = format!("leader_election_master_status{{name=\"{component}\"}} ");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix(series.as_str()))
        .map(|v| v.trim() == "1")
}

/// The index (into `ctls`) of the one controller in `live` whose
/// `component` leads, once every one of them answers and exactly one leads.
fn sole_leader(admin: &Path, ctls: &[Ctl], live: &[usize], component: &str) -> Option<usize> {
    let mut leaders = Vec::new();
    for &i in live {
        if is_leader(admin, &ctls[i], component)? {
            leaders.push(i);
        }
    }
    (leaders.len() == 1).then(|| leaders[0])
}

/// A Lease as the cluster records it.
#[derive(Debug, Clone, PartialEq)]
struct Lease {
    holder: String,
    acquired: SystemTime,
    renewed: SystemTime,
    duration: Duration,
}

fn lease(admin: &Path, at: &Ctl, name: &str) -> Option<Lease> {
    let out = kubectl_at(
        admin,
        at,
        &[
            "get",
            "lease",
            "-n",
            "kube-system",
            name,
            "-o",
            "jsonpath={.spec.holderIdentity}|{.spec.acquireTime}|{.spec.renewTime}|{.spec.leaseDurationSeconds}",
        ],
    );
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let parts: Vec<&str> = text.trim().split('|').collect();
    let [holder, acquired, renewed, secs] = parts[..] else {
        return None;
    };
    if holder.is_empty() {
        return None;
    }
    Some(Lease {
        holder: holder.to_string(),
        acquired: humantime::parse_rfc3339(acquired).ok()?,
        renewed: humantime::parse_rfc3339(renewed).ok()?,
        duration: Duration::from_secs(secs.parse().ok()?),
    })
}

/// Waits until each Lease has a holder and exactly one live process of
/// each component leads; returns the leader index of each.
fn wait_one_leader_each(admin: &Path, ctls: &[Ctl], live: &[usize]) -> [usize; 2] {
    wait_for(
        "one Lease holder each for kcm and scheduler",
        CONTROL_PLANE_READY,
        || {
            let mut out = [0; 2];
            for (slot, name) in out.iter_mut().zip(LEASES) {
                lease(admin, &ctls[live[0]], name)?;
                *slot = sole_leader(admin, ctls, live, name)?;
            }
            Some(out)
        },
    )
}

fn child_pids(node: &Node) -> Vec<(&'static str, i32)> {
    ["etcd", "kube-apiserver", KCM, SCHEDULER]
        .into_iter()
        .map(|c| {
            let pid = node
                .child_pid(c)
                .unwrap_or_else(|| panic!("{}: no pid for {c}", node.name));
            (c, pid)
        })
        .collect()
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

/// What one kill -9 proved, for the summary.
struct Takeover {
    lease: &'static str,
    from: String,
    to: String,
    after_kill: Duration,
    bound: Duration,
}

/// kill -9 of controller `victim` and everything the issue asks of the
/// survivors, then its restart without a token. Returns the takeovers of
/// the Leases it held.
#[allow(clippy::too_many_arguments)]
fn kill_and_recover(
    rt: &tokio::runtime::Runtime,
    bin: &Path,
    admin: &Path,
    ctls: &[Ctl],
    procs: &mut [Option<Controller>],
    victim: usize,
    leaders: [usize; 2],
    round: &str,
) -> (Vec<Takeover>, [usize; 2]) {
    let all = [0usize, 1, 2];
    let survivors: Vec<usize> = all.into_iter().filter(|i| *i != victim).collect();
    let held: Vec<&'static str> = LEASES
        .iter()
        .zip(leaders)
        .filter(|(_, l)| *l == victim)
        .map(|(n, _)| *n)
        .collect();
    assert!(!held.is_empty(), "{round}: the victim holds no Lease");
    let vnode = &ctls[victim].node;
    let before: Vec<Lease> = held
        .iter()
        .map(|n| lease(admin, &ctls[survivors[0]], n).expect("the Lease before the kill"))
        .collect();
    let children = child_pids(vnode);
    // The retry period in force (the Lease records the duration).
    let retry = ctls[survivors[0]]
        .flags(KCM)
        .get("leader-elect-retry-period")
        .map(|v| parse_go_duration(v).expect("a Go duration"))
        .unwrap_or(DEFAULT_RETRY_PERIOD);
    for (name, l) in held.iter().zip(&before) {
        assert_eq!(
            l.duration, DEFAULT_LEASE_DURATION,
            "{name}: lease duration in force"
        );
    }

    // --- kill -9 the mkectl holding the Lease(s).
    let mut p = procs[victim].take().unwrap();
    let killed_at = SystemTime::now();
    let t_kill = Instant::now();
    signal(p.pid(), libc::SIGKILL);
    p.wait_exit(Duration::from_secs(10));
    wait_for(
        "the killed controller's children gone",
        CHILDREN_GONE,
        || children.iter().all(|(_, pid)| !alive(*pid)).then_some(()),
    );
    // Its apiserver is gone with it: nothing serves at its address.
    assert!(
        !kubectl_at(admin, &ctls[victim], &["get", "ns", "default"])
            .status
            .success(),
        "{round}: the killed controller's apiserver still answers"
    );

    // --- A survivor takes each Lease over, while kubectl against both
    // survivors keeps working (every call must succeed).
    let mut calls = 0;
    let mut leader_change_retries = 0;
    let mut moved: Vec<Option<(Lease, Duration)>> = vec![None; held.len()];
    let end = t_kill + Duration::from_secs(90);
    let mut turn = 0;
    while moved.iter().any(Option::is_none) {
        assert!(
            Instant::now() < end,
            "{round}: Leases {held:?} not taken over within 90 s of the kill"
        );
        let at = &ctls[survivors[turn % 2]];
        turn += 1;
        for (k, name) in held.iter().enumerate() {
            if moved[k].is_some() {
                continue;
            }
            let (out, retries) = kubectl_at_through_leader_change(
                admin,
                at,
                &[
                    "get",
                    "lease",
                    "-n",
                    "kube-system",
                    name,
                    "-o",
                    "jsonpath={.spec.holderIdentity}",
                ],
            );
            calls += 1;
            leader_change_retries += retries;
            let holder = stdout_ok(
                &format!("{round}: kubectl against survivor {}", at.node.name),
                &out,
            );
            if !holder.is_empty() && holder != before[k].holder {
                let l = lease(admin, at, name).expect("the new Lease");
                moved[k] = Some((l, t_kill.elapsed()));
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }

    let mut takeovers = Vec::new();
    for ((name, old), new) in held.iter().zip(&before).zip(moved) {
        let (new, seen_after) = new.unwrap();
        // acquireTime is written by the new holder: the takeover instant.
        let after_kill = new
            .acquired
            .duration_since(killed_at)
            .unwrap_or(Duration::ZERO);
        let bound = new.duration + retry.mul_f64(2.0 * MAX_JITTERED_RETRY) + SLACK;
        println!(
            "{round}: {name} Lease taken over {} after the kill (seen by polling after {}); lease duration {}, retry period {}; bound {}",
            secs(after_kill),
            secs(seen_after),
            secs(new.duration),
            secs(retry),
            secs(bound),
        );
        assert!(
            after_kill <= bound,
            "{round}: {name} taken over {after_kill:?} after the kill (bound {bound:?})"
        );
        // Never before the killed holder's lease had expired.
        let since_renewal = new.acquired.duration_since(old.renewed).unwrap_or_default();
        assert!(
            since_renewal >= old.duration,
            "{round}: {name} taken {since_renewal:?} after the old holder's renewal, before its {:?} lease expired",
            old.duration
        );
        takeovers.push(Takeover {
            lease: name,
            from: old.holder.clone(),
            to: new.holder.clone(),
            after_kill,
            bound,
        });
    }
    println!(
        "{round}: {calls} kubectl calls against the survivors during the takeover, all succeeded \
         ({leader_change_retries} retried after etcd's transient \"{ETCD_LEADER_CHANGED}\")"
    );

    // Exactly one survivor process leads each Lease now.
    let leaders_now = wait_one_leader_each(admin, ctls, &survivors);
    for (name, l) in LEASES.iter().zip(leaders_now) {
        assert!(survivors.contains(&l), "{round}: {name} leader {l}");
    }

    // etcd keeps quorum: linearizable writes through both survivors; the
    // killed member is still a member.
    for &s in &survivors {
        let n = &ctls[s].node;
        assert!(
            rt.block_on(etcd_healthy(n)),
            "{round}: etcd on {} has no quorum",
            n.name
        );
        let m = rt.block_on(members(n)).expect("member list");
        assert_eq!(m.len(), 3, "{round}: {m:?}");
        assert!(m.iter().all(|(_, learner)| !learner), "{m:?}");
    }
    // A write through one survivor is read through the other.
    let cm = format!("{}-while-down", round.replace(' ', "-"));
    stdout_ok(
        "create through a survivor",
        &kubectl_at(
            admin,
            &ctls[survivors[0]],
            &[
                "create",
                "configmap",
                &cm,
                "-n",
                "default",
                "--from-literal=k=v",
            ],
        ),
    );
    let got = stdout_ok(
        "read through the other survivor",
        &kubectl_at(
            admin,
            &ctls[survivors[1]],
            &[
                "get",
                "configmap",
                &cm,
                "-n",
                "default",
                "-o",
                "jsonpath={.data.k}",
            ],
        ),
    );
    assert_eq!(got, "v");

    // --- The killed controller comes back with its data and no token.
    let t0 = Instant::now();
    let mut p = vnode.start_controller(&["--bin-dir", bin.to_str().unwrap()]);
    wait_ready(&mut p, "controller ready");
    let log = p.log_text();
    assert!(
        !log.contains("joining the cluster"),
        "{round}: the restart joined again:\n{log}"
    );
    println!(
        "{round}: {} back ready {} after its restart (no token)",
        vnode.name,
        secs(t0.elapsed())
    );
    procs[victim] = Some(p);
    assert!(
        rt.block_on(etcd_healthy(vnode)),
        "{round}: etcd on the restarted {} is not serving",
        vnode.name
    );
    // It serves what was written while it was down.
    let got = kubectl_until(
        admin,
        &ctls[victim],
        "the restarted controller serves kubectl",
        &[
            "get",
            "configmap",
            &cm,
            "-n",
            "default",
            "-o",
            "jsonpath={.data.k}",
        ],
    );
    assert_eq!(got, "v");
    // It runs its controller-manager and scheduler with leader election
    // from the start and stands by: still exactly one leader each, among
    // all three.
    for c in LEASES {
        assert_eq!(ctls[victim].flags(c).get("leader-elect"), Some("true"));
    }
    wait_for(
        "the restarted controller's kcm and scheduler answer",
        CONTROL_PLANE_READY,
        || {
            LEASES
                .iter()
                .all(|c| is_leader(admin, &ctls[victim], c).is_some())
                .then_some(())
        },
    );
    let leaders_after = wait_one_leader_each(admin, ctls, &all);
    (takeovers, leaders_after)
}

#[test]
fn three_real_controllers_share_leases_and_survive_a_kill() {
    let Some(bin) = control_plane_bins() else {
        return;
    };
    let started = Instant::now();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ctls = three_controllers();
    let admin: PathBuf = ctls[0].node.pki("admin.conf");

    // --- c1 bootstraps; c2 and c3 join with one controller token.
    let mut procs: Vec<Option<Controller>> = Vec::new();
    let t0 = Instant::now();
    procs.push(Some(ctls[0].node.start_full_controller(&bin, &[])));
    println!("c1 ready in {}", secs(t0.elapsed()));
    let tok = token_create(&ctls[0].node, "controller", &["--description", "ha real"]);
    let tok_file = token_file(&ctls[0].node, "controller.token", &tok);
    for c in &ctls[1..] {
        let t0 = Instant::now();
        procs.push(Some(c.node.start_full_controller(
            &bin,
            &["--token-file", tok_file.to_str().unwrap()],
        )));
        println!("{} joined and ready in {}", c.node.name, secs(t0.elapsed()));
        assert!(c.node.data.join("join.json").exists());
    }
    let m = rt.block_on(members(&ctls[0].node)).unwrap();
    let names: Vec<&str> = m.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["c1", "c2", "c3"], "{m:?}");
    assert!(m.iter().all(|(_, learner)| !learner), "{m:?}");

    // c1 started alone (no leader election) and switched it on when c2
    // registered; the joiners run with it from the start.
    common::join::wait_log(
        procs[0].as_mut().unwrap(),
        "restarting with leader election",
        CONTROL_PLANE_READY,
    );
    for c in &ctls {
        for comp in LEASES {
            let flags = wait_for(
                &format!("{} runs {comp} with leader election", c.node.name),
                CONTROL_PLANE_READY,
                || {
                    let f = c.flags(comp);
                    (f.get("leader-elect") == Some("true")).then_some(f)
                },
            );
            assert_eq!(flags.get("leader-elect"), Some("true"));
        }
    }

    // --- kubectl works against each apiserver with one admin credential,
    // and all three serve the same data.
    stdout_ok(
        "create through c1",
        &kubectl_at(
            &admin,
            &ctls[0],
            &[
                "create",
                "configmap",
                "shared",
                "-n",
                "default",
                "--from-literal=k=v1",
            ],
        ),
    );
    for c in &ctls {
        let v = kubectl_until(
            &admin,
            c,
            &format!("kubectl against {}", c.node.name),
            &[
                "get",
                "configmap",
                "shared",
                "-n",
                "default",
                "-o",
                "jsonpath={.data.k}",
            ],
        );
        assert_eq!(v, "v1", "through {}", c.node.name);
        // Each node's own admin kubeconfig points at its own apiserver.
        let own = c.node.kubectl_ok(&[
            "config",
            "view",
            "-o",
            "jsonpath={.clusters[0].cluster.server}",
        ]);
        assert_eq!(own, c.api_url());
    }

    // --- One Lease each for kcm and scheduler, one leading process each.
    let all = [0usize, 1, 2];
    let leaders = wait_one_leader_each(&admin, &ctls, &all);
    for (name, l) in LEASES.iter().zip(leaders) {
        let held = lease(&admin, &ctls[0], name).unwrap();
        println!(
            "{name}: Lease held by {} ({}), {} lease",
            ctls[l].node.name,
            held.holder,
            secs(held.duration)
        );
    }
    let leases = kubectl_until(
        &admin,
        &ctls[1],
        "Lease list",
        &[
            "get",
            "lease",
            "-n",
            "kube-system",
            "-o",
            "jsonpath={range .items[*]}{.metadata.name}{\"\\n\"}{end}",
        ],
    );
    for name in LEASES {
        assert_eq!(leases.lines().filter(|l| *l == name).count(), 1, "{leases}");
    }

    // --- kill -9 the controller holding the controller-manager's Lease;
    // again for the scheduler's holder if that one was elsewhere.
    let mut all_takeovers = Vec::new();
    let (t, leaders) = kill_and_recover(
        &rt, &bin, &admin, &ctls, &mut procs, leaders[0], leaders, "kill 1",
    );
    let scheduler_done = t.iter().any(|t| t.lease == SCHEDULER);
    all_takeovers.extend(t);
    if !scheduler_done {
        let (t, _) = kill_and_recover(
            &rt, &bin, &admin, &ctls, &mut procs, leaders[1], leaders, "kill 2",
        );
        all_takeovers.extend(t);
    }
    for name in LEASES {
        assert!(
            all_takeovers.iter().any(|t| t.lease == name),
            "{name} takeover not exercised"
        );
    }
    for t in &all_takeovers {
        assert_ne!(t.from, t.to);
        println!(
            "TAKEOVER {}: {} after kill -9 of its holder (bound {})",
            t.lease,
            secs(t.after_kill),
            secs(t.bound)
        );
    }

    for p in procs.iter().flatten() {
        signal(p.pid(), libc::SIGTERM);
    }
    for p in procs.iter_mut().flatten() {
        p.wait_exit(Duration::from_secs(150));
    }
    println!("whole test: {}", secs(started.elapsed()));
}
