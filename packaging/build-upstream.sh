#!/usr/bin/env bash
# Builds the pinned upstream components from their Go modules:
#   kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy
#   (packaging/upstream/go.mod, k8s.io/kubernetes v1.32.8), and, for tests and
#   benchmarks only, the upstream konnectivity proxy-server and proxy-agent
#   (packaging/upstream/konnectivity/go.mod). Also what goes into the images
#   mkectl makes locally: CoreDNS (packaging/upstream/coredns/go.mod, for the
#   coredns stack's image) and mkectl's own pod sandbox program, pause
#   (packaging/pause/, packed into the sandbox image by the worker itself).
#
# usage: packaging/build-upstream.sh [OUT_DIR]
#
# The binaries are cached outside the clone, keyed by the hash of everything
# that decides their bytes (both go.mod/go.sum pairs, the recipe below and the
# Go version, the pause sources): $MKECTL_UPSTREAM_CACHE (default /var/cache/mkectl-upstream)
# /<key>/bin. A second run with the same key builds nothing. With OUT_DIR the
# binaries are also linked (or copied) there. The last line on stdout is the
# directory that holds them; progress goes to stderr.
#
# Offline-reproducible: -mod=readonly with go.sum, GOFLAGS=-trimpath, no VCS
# stamping, fixed build date (the v1.32.8 tag's commit time), CGO_ENABLED=0.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
mod_k8s="$here/upstream"
mod_knp="$here/upstream/konnectivity"
mod_coredns="$here/upstream/coredns"
mod_pause="$here/pause"

if ! command -v go >/dev/null 2>&1 && [ -x /usr/local/go/bin/go ]; then
  export PATH="$PATH:/usr/local/go/bin"
fi
command -v go >/dev/null 2>&1 || { echo "build-upstream: go not found (PATH or /usr/local/go/bin)" >&2; exit 69; }

# The pins. tests/upstream_pins.rs checks that these agree with go.mod and
# packaging/versions.yaml.
KUBE_VERSION=v1.32.8
KUBE_GIT_COMMIT=2e83bc4bf31e88b7de81d5341939d5ce2460f46f
KUBE_BUILD_DATE=2025-08-13T14:21:20Z
KNP_VERSION=v0.33.0
COREDNS_VERSION=v1.11.3
COREDNS_GIT_COMMIT=a7ed346585e30b99317d36e4d007b7b19a228ea5
PAUSE_VERSION=mkectl-pause-1

kube_cmds=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy)
knp_cmds=(proxy-server proxy-agent)
# Image contents: pause is bundled (the worker packs it into the sandbox
# image under the configured name); coredns only goes into its image.
image_cmds=(pause coredns)

# Everything that changes the output bytes goes into the recipe and the key.
recipe="kube=$KUBE_VERSION commit=$KUBE_GIT_COMMIT date=$KUBE_BUILD_DATE knp=$KNP_VERSION coredns=$COREDNS_VERSION coredns-commit=$COREDNS_GIT_COMMIT pause=$PAUSE_VERSION cgo=0 trimpath buildvcs=false ldflags=-s,-w,version-x recipe=3"
go_version="$(GOTOOLCHAIN=local go env GOVERSION)"
key="$( { echo "$recipe"; echo "$go_version"; cat "$mod_k8s/go.mod" "$mod_k8s/go.sum" "$mod_knp/go.mod" "$mod_knp/go.sum" "$mod_coredns/go.mod" "$mod_coredns/go.sum" "$mod_pause/go.mod" "$mod_pause"/*.go; } | sha256sum | cut -c1-16)"

cache_root="${MKECTL_UPSTREAM_CACHE:-/var/cache/mkectl-upstream}"
dest="$cache_root/$key"
bin="$dest/bin"

log() { echo "build-upstream: $*" >&2; }

have_all() {
  local c
  for c in "${kube_cmds[@]}" "${knp_cmds[@]}" "${image_cmds[@]}"; do [ -x "$bin/$c" ] || return 1; done
  [ -f "$bin/source-builds.tsv" ] || return 1
  # A cached binary that changed since it was built (disk damage, a hand
  # edit) is not reused: its recorded sha256 must still match.
  local name sum bad=0
  while IFS=$'\t' read -r name _ _ sum _; do
    case "$name" in ''|'#'*) continue ;; esac
    if [ "$(sha256sum "$bin/$name" | cut -d' ' -f1)" != "$sum" ]; then
      log "cached $name does not match its recorded sha256; rebuilding"
      bad=1
    fi
  done < "$bin/source-builds.tsv"
  [ "$bad" = 0 ]
}

if have_all; then
  log "reusing $bin (key $key: $KUBE_VERSION, konnectivity $KNP_VERSION, coredns $COREDNS_VERSION, $PAUSE_VERSION, $go_version)"
else
  mkdir -p "$cache_root"
  # The Go build cache lives beside the binaries, so a recipe change
  # recompiles only what it touches.
  export GOCACHE="$cache_root/gocache"
  export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="-mod=readonly -trimpath -buildvcs=false"
  stage="$(mktemp -d "$cache_root/.stage-$key.XXXXXX")"
  trap 'rm -rf "$stage"' EXIT

  vx() { printf -- "-X 'k8s.io/client-go/pkg/version.%s=%s' -X 'k8s.io/component-base/version.%s=%s' " "$1" "$2" "$1" "$2"; }
  minor="${KUBE_VERSION#v1.}"; minor="${minor%%.*}"
  kube_ldflags="-s -w $(vx gitVersion "$KUBE_VERSION")$(vx gitMajor 1)$(vx gitMinor "$minor")$(vx gitCommit "$KUBE_GIT_COMMIT")$(vx gitTreeState clean)$(vx buildDate "$KUBE_BUILD_DATE")"

  log "downloading modules (go.sum-verified; reused from GOMODCACHE when present)"
  (cd "$mod_k8s" && go mod download) >&2
  (cd "$mod_knp" && go mod download) >&2
  (cd "$mod_coredns" && go mod download) >&2

  start=$(date +%s)
  for c in "${kube_cmds[@]}"; do
    t0=$(date +%s)
    log "building $c $KUBE_VERSION ..."
    (cd "$mod_k8s" && go build -ldflags "$kube_ldflags" -o "$stage/$c" "k8s.io/kubernetes/cmd/$c") >&2
    log "built $c in $(( $(date +%s) - t0 ))s"
  done
  for c in "${knp_cmds[@]}"; do
    t0=$(date +%s)
    log "building $c (apiserver-network-proxy $KNP_VERSION) ..."
    (cd "$mod_knp" && go build -ldflags "-s -w" -o "$stage/$c" "sigs.k8s.io/apiserver-network-proxy/cmd/${c#proxy-}") >&2
    log "built $c in $(( $(date +%s) - t0 ))s"
  done
  t0=$(date +%s)
  log "building coredns $COREDNS_VERSION ..."
  (cd "$mod_coredns" && go build -ldflags "-s -w -X github.com/coredns/coredns/coremain.GitCommit=$COREDNS_GIT_COMMIT" \
    -o "$stage/coredns" github.com/coredns/coredns) >&2
  log "built coredns in $(( $(date +%s) - t0 ))s"
  # No dependencies: nothing to download, builds in seconds.
  (cd "$mod_pause" && go build -ldflags "-s -w -X main.version=$PAUSE_VERSION" -o "$stage/pause" .) >&2
  log "built pause ($PAUSE_VERSION)"

  # The record `mkectl bundle create --from-dir` reads: these are source
  # builds with their own SHA-256 (the published artifacts' checksums do not
  # apply), the konnectivity peers are never bundled, and coredns is image
  # content (bundled only inside its image archive, `bundle create --image`).
  {
    echo "# Built from source by packaging/build-upstream.sh (key $key, $go_version); not the published release artifacts."
    echo "# recipe: $recipe"
    echo "# name	component	version	sha256	use"
    for c in "${kube_cmds[@]}"; do
      printf '%s\tkubernetes\t%s\t%s\tship\n' "$c" "$KUBE_VERSION" "$(sha256sum "$stage/$c" | cut -d' ' -f1)"
    done
    for c in "${knp_cmds[@]}"; do
      printf '%s\tapiserver-network-proxy\t%s\t%s\ttest-only\n' "$c" "$KNP_VERSION" "$(sha256sum "$stage/$c" | cut -d' ' -f1)"
    done
    printf '%s\tmkectl-pause\t%s\t%s\tship\n' pause "$PAUSE_VERSION" "$(sha256sum "$stage/pause" | cut -d' ' -f1)"
    printf '%s\tcoredns\t%s\t%s\timage\n' coredns "$COREDNS_VERSION" "$(sha256sum "$stage/coredns" | cut -d' ' -f1)"
  } > "$stage/source-builds.tsv"
  mkdir -p "$dest"
  rm -rf "$bin"
  mv "$stage" "$bin"
  trap - EXIT
  log "built all in $(( $(date +%s) - start ))s into $bin"
fi

if [ $# -ge 1 ]; then
  out="$1"
  mkdir -p "$out"
  for c in "${kube_cmds[@]}" "${knp_cmds[@]}" "${image_cmds[@]}"; do
    ln -f "$bin/$c" "$out/$c" 2>/dev/null || cp -f "$bin/$c" "$out/$c"
  done
  cp -f "$bin/source-builds.tsv" "$out/source-builds.tsv"
  echo "$(cd "$out" && pwd)"
else
  echo "$bin"
fi
