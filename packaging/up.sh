#!/usr/bin/env bash
# A real control plane on this machine, from a fresh clone, in one command:
# installs the system packages it needs (Debian), builds mkectl, builds or
# reuses the upstream Kubernetes binaries (packaging/build-upstream.sh),
# starts `mkectl controller` in the background, waits until it is ready and
# prints the kubectl line to use.
#
# With --single-node the same node also runs pods (`mkectl controller
# --enable-worker --no-taints`: containerd, kubelet, kube-proxy and the
# konnectivity agent), offline: CoreDNS and a busybox image are packed
# locally and imported, and the pod network is Debian's CNI bridge plugin
# (`network.provider: custom` with a conflist this script writes once the
# node has its pod CIDR).
#
# usage: packaging/up.sh [--single-node]   (as root; uses sudo when not root)
# env:   MKECTL_DATA_DIR (default /var/lib/mke), MKECTL_RUN_DIR (/run/mke),
#        MKECTL_LOG (default /var/log/mkectl-controller.log),
#        MKECTL_CONFIG (--single-node: written when missing, default
#        /etc/mke/mkectl.yaml), MKECTL_ADDRESS (--single-node: the node's
#        address; default: the host's first global IPv4 address),
#        MKECTL_CNI_CONF_DIR (default /etc/cni/net.d)
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

single=false
case "${1:-}" in
  "") ;;
  --single-node) single=true ;;
  *) echo "usage: packaging/up.sh [--single-node]" >&2; exit 64 ;;
esac

data_dir="${MKECTL_DATA_DIR:-/var/lib/mke}"
run_dir="${MKECTL_RUN_DIR:-/run/mke}"
log="${MKECTL_LOG:-/var/log/mkectl-controller.log}"
config="${MKECTL_CONFIG:-/etc/mke/mkectl.yaml}"
cni_conf_dir="${MKECTL_CNI_CONF_DIR:-/etc/cni/net.d}"
# Debian's containernetworking-plugins.
cni_bin_dir=/usr/lib/cni
demo_image=docker.io/mkectl/busybox:local

need=()
for b in etcd openssl; do command -v "$b" >/dev/null 2>&1 || need+=("$b"); done
if [ ${#need[@]} -gt 0 ]; then
  echo "up: installing etcd-server etcd-client openssl (missing: ${need[*]})"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
  # Keep Debian from starting its own etcd on the ports mkectl uses.
  as_root sh -c 'if [ ! -e /usr/sbin/policy-rc.d ]; then printf "#!/bin/sh\nexit 101\n" > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; touch /tmp/.mkectl-up-policy; fi'
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends etcd-server etcd-client openssl
  as_root sh -c 'if [ -e /tmp/.mkectl-up-policy ]; then rm -f /usr/sbin/policy-rc.d /tmp/.mkectl-up-policy; fi'
fi
if $single; then
  pkgs=()
  command -v containerd >/dev/null 2>&1 || pkgs+=(containerd)
  command -v runc >/dev/null 2>&1 || pkgs+=(runc)
  command -v iptables >/dev/null 2>&1 || pkgs+=(iptables)
  command -v conntrack >/dev/null 2>&1 || pkgs+=(conntrack)
  [ -x /bin/busybox ] || pkgs+=(busybox-static)
  [ -x "$cni_bin_dir/bridge" ] || pkgs+=(containernetworking-plugins)
  if [ ${#pkgs[@]} -gt 0 ]; then
    echo "up: installing ${pkgs[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
    as_root sh -c 'if [ ! -e /usr/sbin/policy-rc.d ]; then printf "#!/bin/sh\nexit 101\n" > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; touch /tmp/.mkectl-up-policy; fi'
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${pkgs[@]}"
    as_root sh -c 'if [ -e /tmp/.mkectl-up-policy ]; then rm -f /usr/sbin/policy-rc.d /tmp/.mkectl-up-policy; fi'
  fi
fi
if ! command -v go >/dev/null 2>&1 && [ -x /usr/local/go/bin/go ]; then
  export PATH="$PATH:/usr/local/go/bin"
fi

echo "up: building mkectl (cargo build --release)"
cargo build --release --locked --bin mkectl
mkectl="$PWD/target/release/mkectl"

echo "up: building or reusing the upstream Kubernetes binaries"
bin_dir="$(as_root env PATH="$PATH" packaging/build-upstream.sh)"

common=(--data-dir "$data_dir" --run-dir "$run_dir")
start=(controller --bin-dir "$bin_dir")
if $single; then
  common+=(--config "$config")
  start+=(--enable-worker --no-taints)
  if ! as_root test -e "$config"; then
    echo "up: writing $config"
    as_root mkdir -p "$(dirname "$config")"
    {
      printf 'apiVersion: mkectl.io/v1beta1\nkind: ClusterConfig\nspec:\n'
      if [ -n "${MKECTL_ADDRESS:-}" ]; then printf '  api:\n    address: %s\n' "$MKECTL_ADDRESS"; fi
      printf '  network:\n    provider: custom\n'
      printf '  worker:\n    cniBinDir: %s\n    cniConfDir: %s\n' "$cni_bin_dir" "$cni_conf_dir"
    } | as_root sh -c "umask 077; cat > '$config'"
  fi
  # Pods reach Services and each other through the host's forwarding.
  if [ "$(cat /proc/sys/net/ipv4/ip_forward)" != 1 ]; then
    echo "up: enabling net.ipv4.ip_forward (pods need it; mkectl refuses to start without it)"
    as_root sysctl -qw net.ipv4.ip_forward=1
  fi
  # Images imported at start: CoreDNS (the default DNS stack) and busybox
  # for the demo pod; nothing is pulled.
  echo "up: packing the CoreDNS and busybox images"
  as_root mkdir -p "$data_dir/images"
  packed="$(as_root bash packaging/images/build-images.sh --mkectl "$mkectl" --bin-dir "$bin_dir" | tail -n 1)"
  as_root cp "$packed/coredns-v1.11.3.oci.tar" "$data_dir/images/coredns.tar"
  as_root "$mkectl" images pack --name "$demo_image" --file /bin/busybox:/bin/busybox \
    --entrypoint /bin/busybox --output "$data_dir/images/busybox.tar" >/dev/null
fi
kubectl_cmd=(kubectl --kubeconfig "$data_dir/pki/admin.conf")
if as_root "$mkectl" "${common[@]}" status >/dev/null 2>&1; then
  echo "up: a controller is already running on $data_dir"
else
  echo "up: starting mkectl ${start[*]} (log: $log)"
  as_root sh -c 'nohup "$@" >>"'"$log"'" 2>&1 &' sh "$mkectl" "${common[@]}" "${start[@]}"
  deadline=$(( $(date +%s) + 300 ))
  until as_root "$mkectl" "${common[@]}" status >/dev/null 2>&1; do
    if [ "$(date +%s)" -gt "$deadline" ]; then
      echo "up: not ready after 300s; last log lines:" >&2
      as_root tail -n 30 "$log" >&2
      exit 1
    fi
    echo "up: waiting for the control plane to become ready ..."
    sleep 3
  done
fi
if $single; then
  node="$(as_root "${kubectl_cmd[@]}" get nodes -o 'jsonpath={.items[0].metadata.name}' 2>/dev/null || true)"
  deadline=$(( $(date +%s) + 300 ))
  cidr=""
  while [ -z "$cidr" ]; do
    [ "$(date +%s)" -gt "$deadline" ] && { echo "up: the node got no pod CIDR in 300s" >&2; exit 1; }
    echo "up: waiting for the node to register and get its pod CIDR ..."
    sleep 2
    node="$(as_root "${kubectl_cmd[@]}" get nodes -o 'jsonpath={.items[0].metadata.name}' 2>/dev/null || true)"
    [ -n "$node" ] && cidr="$(as_root "${kubectl_cmd[@]}" get node "$node" -o 'jsonpath={.spec.podCIDR}' 2>/dev/null || true)"
  done
  if ! as_root sh -c "ls '$cni_conf_dir'/*.conflist >/dev/null 2>&1"; then
    echo "up: writing the bridge CNI config for $cidr to $cni_conf_dir"
    as_root mkdir -p "$cni_conf_dir"
    printf '{"cniVersion":"1.0.0","name":"mke-bridge","plugins":[{"type":"bridge","bridge":"cni0","isGateway":true,"ipMasq":true,"hairpinMode":true,"ipam":{"type":"host-local","ranges":[[{"subnet":"%s"}]],"routes":[{"dst":"0.0.0.0/0"}]}},{"type":"portmap","capabilities":{"portMappings":true}}]}\n' "$cidr" \
      | as_root sh -c "cat > '$cni_conf_dir/10-mke-bridge.conflist'"
  fi
  until [ "$(as_root "${kubectl_cmd[@]}" get node "$node" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}')" = True ]; do
    [ "$(date +%s)" -gt "$deadline" ] && { echo "up: node $node not Ready in 300s" >&2; exit 1; }
    echo "up: waiting for node $node to be Ready ..."
    sleep 2
  done
fi
as_root "$mkectl" "${common[@]}" status
echo
echo "Ready. Use:"
echo "  kubectl --kubeconfig $data_dir/pki/admin.conf get ns"
if $single; then
  echo "  kubectl --kubeconfig $data_dir/pki/admin.conf run demo --image=$demo_image --image-pull-policy=Never --command -- /bin/busybox sh -c 'echo hello from a pod; exec /bin/busybox sleep 3600'"
  echo "  kubectl --kubeconfig $data_dir/pki/admin.conf wait --for=condition=Ready pod/demo"
  echo "  kubectl --kubeconfig $data_dir/pki/admin.conf logs demo"
  echo "  kubectl --kubeconfig $data_dir/pki/admin.conf exec demo -- /bin/busybox nslookup kubernetes.default.svc.cluster.local"
fi
echo "Stop it with: $mkectl --data-dir $data_dir --run-dir $run_dir status -o json | grep pid; kill <mkectl pid>   (or: pkill -f 'mkectl.*controller')"
