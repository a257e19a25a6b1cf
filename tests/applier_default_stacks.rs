//! The default stacks (manifests/ templates): they render, parse as
//! multi-document YAML, carry the configured DNS IP, CIDRs and images, the
//! configs embedded in them parse too, and they apply cleanly through the
//! applier to the stateful API emulation.

mod common_applier;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common_applier::FakeKube;
use mkectl::applier::manifest::{parse_file, Manifest};
use mkectl::applier::{
    render_default_stacks, write_default_stacks, AddonsSettings, Applier, ApplierConfig,
    ApplierError, Provider, RenderInputs, RenderedFile, StackState,
};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

fn inputs(provider: Provider) -> RenderInputs {
    RenderInputs {
        cluster_dns_ip: "10.96.0.10".parse().unwrap(),
        cluster_domain: "cluster.example".into(),
        pod_cidr: "10.244.0.0/16".parse().unwrap(),
        service_cidr: "10.96.0.0/12".parse().unwrap(),
        api_server_host: "192.0.2.10".into(),
        api_server_port: 6443,
        provider,
        cni_bin_dir: PathBuf::from(mkectl::config::defaults::CNI_BIN_DIR),
        cni_conf_dir: PathBuf::from(mkectl::config::defaults::CNI_CONF_DIR),
    }
}

/// Every image pointed at a private registry, as an air-gapped site would.
fn airgapped() -> AddonsSettings {
    let mut s = AddonsSettings::default();
    // The DaemonSet alternative to the host-process kube-proxy, opted in.
    s.kube_proxy.enabled = true;
    s.coredns.image = "registry.internal:5000/coredns/coredns:v1.11.3".into();
    s.coredns.replicas = 3;
    s.kube_proxy.image = "registry.internal:5000/kube-proxy:v1.32.4".into();
    s.cni.calico.cni_image = "registry.internal:5000/calico/cni:v3.29.3".into();
    s.cni.calico.node_image = "registry.internal:5000/calico/node:v3.29.3".into();
    s.cni.calico.kube_controllers_image =
        "registry.internal:5000/calico/kube-controllers:v3.29.3".into();
    s.cni.kube_router.image = "registry.internal:5000/kube-router:v2.4.1".into();
    s
}

fn parsed(files: &[RenderedFile], stack: &str) -> Vec<Manifest> {
    let f = files
        .iter()
        .find(|f| f.stack == stack)
        .unwrap_or_else(|| panic!("stack {stack} not rendered"));
    assert!(
        !f.contents.contains("{{"),
        "unrendered placeholder in {stack}"
    );
    parse_file(Path::new(&f.file), f.contents.as_bytes())
        .unwrap_or_else(|e| panic!("{stack} does not parse: {e:?}"))
}

fn find(docs: &[Manifest], kind: &str, name: &str) -> Value {
    let m = docs
        .iter()
        .find(|m| m.kind == kind && m.name == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"));
    Value::Object(m.object.clone())
}

fn images(v: &Value) -> Vec<String> {
    let spec = &v["spec"]["template"]["spec"];
    ["initContainers", "containers"]
        .iter()
        .flat_map(|k| spec[*k].as_array().cloned().unwrap_or_default())
        .map(|c| c["image"].as_str().unwrap().to_string())
        .collect()
}

fn env(container: &Value, name: &str) -> String {
    container["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
        .and_then(|e| e["value"].as_str())
        .unwrap_or_else(|| panic!("no env {name}"))
        .to_string()
}

#[test]
fn calico_cluster_carries_dns_ip_cidrs_and_images() {
    let files = render_default_stacks(&airgapped(), &inputs(Provider::Calico)).unwrap();
    let stacks: Vec<&str> = files.iter().map(|f| f.stack.as_str()).collect();
    assert_eq!(
        stacks,
        ["bootstrap-rbac", "coredns", "kube-proxy", "calico"]
    );

    // CoreDNS: the Service on the configured IP, the domain in the Corefile.
    let dns = parsed(&files, "coredns");
    assert_eq!(
        find(&dns, "Service", "kube-dns")["spec"]["clusterIP"],
        "10.96.0.10"
    );
    let cm = find(&dns, "ConfigMap", "coredns");
    let corefile = cm["data"]["Corefile"].as_str().unwrap();
    assert!(
        corefile.contains("kubernetes cluster.example in-addr.arpa ip6.arpa"),
        "{corefile}"
    );
    let deploy = find(&dns, "Deployment", "coredns");
    assert_eq!(deploy["spec"]["replicas"], 3);
    assert_eq!(
        images(&deploy),
        ["registry.internal:5000/coredns/coredns:v1.11.3"]
    );

    // kube-proxy: iptables, the pod CIDR, the direct apiserver URL; the
    // embedded KubeProxyConfiguration and kubeconfig are YAML themselves.
    let kp = parsed(&files, "kube-proxy");
    let kp_cm = find(&kp, "ConfigMap", "kube-proxy");
    let data = &kp_cm["data"];
    let conf: Value = serde_saphyr::from_str(data["config.conf"].as_str().unwrap()).unwrap();
    assert_eq!(conf["kind"], "KubeProxyConfiguration");
    assert_eq!(conf["mode"], "iptables");
    assert_eq!(conf["clusterCIDR"], "10.244.0.0/16");
    let kc: Value = serde_saphyr::from_str(data["kubeconfig.conf"].as_str().unwrap()).unwrap();
    assert_eq!(
        kc["clusters"][0]["cluster"]["server"],
        "https://192.0.2.10:6443"
    );
    assert_eq!(
        images(&find(&kp, "DaemonSet", "kube-proxy")),
        ["registry.internal:5000/kube-proxy:v1.32.4"]
    );

    // Calico: VXLAN always, no IP-in-IP, the pod CIDR as the pool, the
    // configured images, CRDs included, CNI config valid JSON.
    let calico = parsed(&files, "calico");
    let ds = find(&calico, "DaemonSet", "calico-node");
    let node = &ds["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(env(node, "CALICO_IPV4POOL_CIDR"), "10.244.0.0/16");
    assert_eq!(env(node, "CALICO_IPV4POOL_VXLAN"), "Always");
    assert_eq!(env(node, "CALICO_IPV4POOL_IPIP"), "Never");
    assert_eq!(env(node, "KUBERNETES_SERVICE_HOST"), "192.0.2.10");
    assert_eq!(env(node, "KUBERNETES_SERVICE_PORT"), "6443");
    assert_eq!(env(node, "FELIX_VXLANPORT"), "4789");
    assert_eq!(
        images(&ds),
        [
            "registry.internal:5000/calico/cni:v3.29.3",
            "registry.internal:5000/calico/node:v3.29.3"
        ]
    );
    assert_eq!(
        images(&find(&calico, "Deployment", "calico-kube-controllers")),
        ["registry.internal:5000/calico/kube-controllers:v3.29.3"]
    );
    let calico_cm = find(&calico, "ConfigMap", "calico-config");
    let cfg = &calico_cm["data"];
    assert_eq!(cfg["calico_backend"], "vxlan");
    // install-cni substitutes __CNI_MTU__ with a number; then it is JSON.
    let cni: Value = serde_json::from_str(
        &cfg["cni_network_config"]
            .as_str()
            .unwrap()
            .replace("__CNI_MTU__", "1450"),
    )
    .unwrap();
    assert_eq!(cni["plugins"][0]["ipam"]["type"], "calico-ipam");
    let crds = calico
        .iter()
        .filter(|m| m.kind == "CustomResourceDefinition")
        .count();
    assert_eq!(crds, 20);
    for m in calico
        .iter()
        .filter(|m| m.kind == "CustomResourceDefinition")
    {
        let spec = &m.object["spec"];
        assert_eq!(
            m.name,
            format!(
                "{}.{}",
                spec["names"]["plural"].as_str().unwrap(),
                spec["group"].as_str().unwrap()
            )
        );
    }
    let vols = ds["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap();
    let host = |n: &str| vols.iter().find(|v| v["name"] == n).unwrap()["hostPath"]["path"].clone();
    assert_eq!(host("cni-bin-dir"), mkectl::config::defaults::CNI_BIN_DIR);
    assert_eq!(host("cni-net-dir"), mkectl::config::defaults::CNI_CONF_DIR);

    // Bootstrap RBAC: join with a bootstrap token, auto-approved CSRs for the
    // first client certificate and for renewals.
    let rbac = parsed(&files, "bootstrap-rbac");
    let bindings: Vec<(String, String)> = rbac
        .iter()
        .map(|m| {
            (
                m.object["roleRef"]["name"].as_str().unwrap().to_string(),
                m.object["subjects"][0]["name"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            )
        })
        .collect();
    assert_eq!(
        bindings,
        [
            (
                "system:node-bootstrapper".to_string(),
                "system:bootstrappers".to_string()
            ),
            (
                "system:certificates.k8s.io:certificatesigningrequests:nodeclient".into(),
                "system:bootstrappers".into()
            ),
            (
                "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient".into(),
                "system:nodes".into()
            ),
            // kube-proxy runs with the node's credentials.
            ("system:node-proxier".into(), "system:nodes".into()),
        ]
    );
}

#[test]
fn default_images_are_the_named_constants() {
    let files =
        render_default_stacks(&AddonsSettings::default(), &inputs(Provider::Calico)).unwrap();
    let dns = parsed(&files, "coredns");
    assert_eq!(
        images(&find(&dns, "Deployment", "coredns")),
        [mkectl::applier::settings::DEFAULT_COREDNS_IMAGE]
    );
    let calico = parsed(&files, "calico");
    assert_eq!(
        images(&find(&calico, "DaemonSet", "calico-node"))[1],
        mkectl::applier::settings::DEFAULT_CALICO_NODE_IMAGE
    );
}

#[test]
fn kube_router_custom_and_disabled_addons() {
    let files = render_default_stacks(&airgapped(), &inputs(Provider::Kuberouter)).unwrap();
    let stacks: Vec<&str> = files.iter().map(|f| f.stack.as_str()).collect();
    assert_eq!(
        stacks,
        ["bootstrap-rbac", "coredns", "kube-proxy", "kube-router"]
    );
    let kr = parsed(&files, "kube-router");
    let ds = find(&kr, "DaemonSet", "kube-router");
    assert_eq!(
        images(&ds),
        ["registry.internal:5000/kube-router:v2.4.1"; 2]
    );
    let args: Vec<&str> = ds["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(
        args.contains(&"--run-service-proxy=false"),
        "kube-proxy does services"
    );
    let kr_cm = find(&kr, "ConfigMap", "kube-router-cfg");
    let conf: Value =
        serde_json::from_str(kr_cm["data"]["cni-conf.json"].as_str().unwrap()).unwrap();
    assert_eq!(conf["plugins"][0]["type"], "bridge");

    // custom: no CNI at all; the operator brings their own stack.
    let files =
        render_default_stacks(&AddonsSettings::default(), &inputs(Provider::Custom)).unwrap();
    let stacks: Vec<&str> = files.iter().map(|f| f.stack.as_str()).collect();
    // (kube-proxy runs as a host process by default: no DaemonSet.)
    assert_eq!(stacks, ["bootstrap-rbac", "coredns"]);

    // Each add-on can be switched off.
    let mut s = AddonsSettings::default();
    s.coredns.enabled = false;
    s.kube_proxy.enabled = false;
    s.cni.enabled = false;
    s.bootstrap_rbac.enabled = false;
    assert!(render_default_stacks(&s, &inputs(Provider::Calico))
        .unwrap()
        .is_empty());
}

#[test]
fn invalid_inputs_name_the_field() {
    let mut s = AddonsSettings::default();
    s.coredns.image = "evil\"\nkind: Secret".into();
    let e = render_default_stacks(&s, &inputs(Provider::Calico)).unwrap_err();
    assert!(
        matches!(&e, ApplierError::InvalidSetting { field, .. } if field == "addons.coredns.image"),
        "{e}"
    );

    let mut i = inputs(Provider::Calico);
    i.cluster_dns_ip = "10.200.0.10".parse().unwrap();
    let e = render_default_stacks(&AddonsSettings::default(), &i).unwrap_err();
    assert!(e.to_string().contains("not inside the service CIDR"), "{e}");

    let mut i = inputs(Provider::Calico);
    i.pod_cidr = "fd00:10::/56".parse().unwrap();
    let e = render_default_stacks(&AddonsSettings::default(), &i).unwrap_err();
    assert!(e.to_string().contains("IPv4"), "{e}");

    let mut i = inputs(Provider::Kuberouter);
    i.api_server_host = "fd00::1".into();
    let files = render_default_stacks(&airgapped(), &i).unwrap();
    let kp = parsed(&files, "kube-proxy");
    let kp_cm = find(&kp, "ConfigMap", "kube-proxy");
    let kc: Value =
        serde_saphyr::from_str(kp_cm["data"]["kubeconfig.conf"].as_str().unwrap()).unwrap();
    assert_eq!(
        kc["clusters"][0]["cluster"]["server"],
        "https://[fd00::1]:6443"
    );
}

#[test]
fn writing_is_idempotent_and_removes_disabled_stacks() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("manifests");
    let r =
        write_default_stacks(&dir, &AddonsSettings::default(), &inputs(Provider::Calico)).unwrap();
    assert_eq!(r.enabled, ["bootstrap-rbac", "coredns", "calico"]);
    assert_eq!(r.disabled, ["kube-proxy", "kube-router"]);
    assert_eq!(r.changed.len(), 3);
    assert!(dir.join("calico/calico.yaml").is_file());
    let r =
        write_default_stacks(&dir, &AddonsSettings::default(), &inputs(Provider::Calico)).unwrap();
    assert!(r.changed.is_empty(), "second write changes nothing");

    // Switching the provider: calico's directory goes (the running applier
    // then prunes it), kube-router's appears.
    let r = write_default_stacks(
        &dir,
        &AddonsSettings::default(),
        &inputs(Provider::Kuberouter),
    )
    .unwrap();
    assert_eq!(r.disabled, ["kube-proxy", "calico"]);
    assert!(!dir.join("calico").exists());
    assert!(dir.join("kube-router/kube-router.yaml").is_file());
}

#[tokio::test]
async fn rendered_default_stacks_apply_cleanly() {
    let fake = FakeKube::start().await;
    fake.set_crd_delay(Duration::from_millis(50));
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("manifests");
    let report =
        write_default_stacks(&dir, &AddonsSettings::default(), &inputs(Provider::Calico)).unwrap();
    let mut cfg = ApplierConfig::new(dir.clone(), fake.client(), "ctrl-1".into());
    cfg.retry_period = Duration::from_millis(200);
    cfg.removed_stacks = report.disabled.clone();
    let applier = Applier::new(cfg).unwrap();
    let status = applier.status();
    let cancel = CancellationToken::new();
    let join = tokio::spawn(applier.run(cancel.clone()));
    let s = tokio::time::timeout(
        Duration::from_secs(30),
        status.wait_until(|s| report.enabled.iter().all(|n| s.stack(n).is_some())),
    )
    .await
    .expect("all default stacks processed");
    for n in &report.enabled {
        assert_eq!(
            s.stack(n).unwrap().state,
            StackState::Applied,
            "{:#?}",
            s.stack(n)
        );
    }
    assert_eq!(
        fake.get("", "services", Some("kube-system"), "kube-dns")
            .unwrap()["spec"]["clusterIP"],
        "10.96.0.10"
    );
    assert!(fake
        .get("apps", "daemonsets", Some("kube-system"), "calico-node")
        .is_some());
    assert!(fake.serves("crd.projectcalico.org", "ippools"));
    cancel.cancel();
    join.await.unwrap().unwrap();
}
