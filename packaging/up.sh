#!/usr/bin/env bash
# A real control plane on this machine, from a fresh clone, in one command:
# installs the system packages it needs (Debian), builds mkectl, builds or
# reuses the upstream Kubernetes binaries (packaging/build-upstream.sh),
# starts `mkectl controller` in the background, waits until it is ready and
# prints the kubectl line to use.
#
# usage: packaging/up.sh            (as root; uses sudo when not root)
# env:   MKECTL_DATA_DIR (default /var/lib/mke), MKECTL_RUN_DIR (/run/mke),
#        MKECTL_LOG (default /var/log/mkectl-controller.log)
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

data_dir="${MKECTL_DATA_DIR:-/var/lib/mke}"
run_dir="${MKECTL_RUN_DIR:-/run/mke}"
log="${MKECTL_LOG:-/var/log/mkectl-controller.log}"

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
if ! command -v go >/dev/null 2>&1 && [ -x /usr/local/go/bin/go ]; then
  export PATH="$PATH:/usr/local/go/bin"
fi

echo "up: building mkectl (cargo build --release)"
cargo build --release --locked --bin mkectl
mkectl="$PWD/target/release/mkectl"

echo "up: building or reusing the upstream Kubernetes binaries"
bin_dir="$(as_root env PATH="$PATH" packaging/build-upstream.sh)"

common=(--data-dir "$data_dir" --run-dir "$run_dir")
if as_root "$mkectl" "${common[@]}" status >/dev/null 2>&1; then
  echo "up: a controller is already running on $data_dir"
else
  echo "up: starting mkectl controller (log: $log)"
  as_root sh -c 'nohup "$@" >>"'"$log"'" 2>&1 &' sh "$mkectl" "${common[@]}" controller --bin-dir "$bin_dir"
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
as_root "$mkectl" "${common[@]}" status
echo
echo "Ready. Use:"
echo "  kubectl --kubeconfig $data_dir/pki/admin.conf get ns"
echo "Stop it with: $mkectl --data-dir $data_dir --run-dir $run_dir status -o json | grep pid; kill <mkectl pid>   (or: pkill -f 'mkectl.*controller')"
