#!/usr/bin/env bash
# Packs the container images the default stacks need and no registry here can
# serve, from binaries built locally by packaging/build-upstream.sh, with
# `mkectl images pack` (tar + gzip + the OCI image spec; no docker daemon):
#
#   coredns-v1.11.3.oci.tar   registry.k8s.io/coredns/coredns:v1.11.3
#                             (the image the default coredns stack runs)
#
# The pod sandbox (pause) image is not packed here: every worker packs it at
# start from the bundled pause program, under its own configured name.
#
# usage: packaging/images/build-images.sh [--mkectl PATH] [--bin-dir DIR] [--output DIR]
#
#   --mkectl   the mkectl to pack with (default: target/release/mkectl, else
#              target/debug/mkectl)
#   --bin-dir  the binaries (default: what build-upstream.sh prints, building
#              them when its cache has none)
#   --output   where the archives go (default: <bin-dir>/../images)
#
# Packing is deterministic: the same binaries give byte-identical archives.
# Progress goes to stderr; the last line on stdout is the output directory.
# Carry the archives in a bundle with `mkectl bundle create ... --image FILE`,
# or copy them into a worker's <data-dir>/images/.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"

# Must match DEFAULT_COREDNS_IMAGE (src/applier/settings.rs) and COREDNS_VERSION
# in build-upstream.sh; tests/images.rs checks both.
COREDNS_IMAGE=registry.k8s.io/coredns/coredns:v1.11.3

mkectl=""
bin_dir=""
out=""
die() { echo "build-images: $*" >&2; exit 1; }
while [ $# -gt 0 ]; do
  case "$1" in
    --mkectl) mkectl="$2"; shift 2 ;;
    --bin-dir) bin_dir="$2"; shift 2 ;;
    --output) out="$2"; shift 2 ;;
    -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
done
if [ -z "$mkectl" ]; then
  for m in "$root/target/release/mkectl" "$root/target/debug/mkectl"; do
    if [ -x "$m" ]; then mkectl="$m"; break; fi
  done
fi
[ -n "$mkectl" ] && [ -x "$mkectl" ] || die "no mkectl to pack with (cargo build, or pass --mkectl)"
if [ -z "$bin_dir" ]; then
  bin_dir="$(bash "$root/packaging/build-upstream.sh" | tail -n 1)"
fi
[ -x "$bin_dir/coredns" ] || die "$bin_dir/coredns is missing (packaging/build-upstream.sh builds it)"
out="${out:-$(cd "$bin_dir/.." && pwd)/images}"
mkdir -p "$out"

# CoreDNS runs as root inside its container: the stack drops every
# capability but NET_BIND_SERVICE (upstream's image instead runs as 65532 with
# a file capability on /coredns, an xattr this packer does not write).
"$mkectl" images pack --name "$COREDNS_IMAGE" \
  --file "$bin_dir/coredns:/coredns:0755" \
  --entrypoint /coredns \
  --output "$out/coredns-v1.11.3.oci.tar" >&2

echo "$(cd "$out" && pwd)"
