#!/usr/bin/env bash
# Builds a bundled mkectl: downloads every upstream artifact pinned in
# packaging/versions.yaml for one architecture, checks each against its pinned
# checksum (sha256sum/sha512sum -c) before keeping it, then lets
# `mkectl bundle create` check them again, unpack them and append them.
#
#   packaging/bundle.sh [--mkectl target/release/mkectl] [--arch amd64]
#                       [--versions packaging/versions.yaml]
#                       [--cache DIR] --output mkectl-bundled
#
# --cache keeps verified downloads between runs (default:
# ${XDG_CACHE_HOME:-~/.cache}/mkectl-bundle/<arch>); a cached file is
# re-verified before reuse. For an offline build, fill the cache directory
# from your mirror and run the same command: nothing is downloaded when every
# artifact is already there and verified. The cache holds only pinned artifacts.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
mkectl="${here}/../target/release/mkectl"
arch=""
versions="${here}/versions.yaml"
cache=""
output=""

die() { echo "bundle.sh: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
  case "$1" in
    --mkectl) mkectl="$2"; shift 2 ;;
    --arch) arch="$2"; shift 2 ;;
    --versions) versions="$2"; shift 2 ;;
    --cache) cache="$2"; shift 2 ;;
    --output) output="$2"; shift 2 ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
done
[ -n "$output" ] || die "--output is required"
[ -x "$mkectl" ] || die "mkectl not found at $mkectl (cargo build --release, or pass --mkectl)"
[ -f "$versions" ] || die "no pins file at $versions"
if [ -z "$arch" ]; then
  case "$(uname -m)" in
    x86_64) arch=amd64 ;;
    aarch64) arch=arm64 ;;
    *) die "unknown machine $(uname -m); pass --arch" ;;
  esac
fi
cache="${cache:-${XDG_CACHE_HOME:-$HOME/.cache}/mkectl-bundle/${arch}}"
mkdir -p "$cache"
for tool in curl sha256sum sha512sum; do
  command -v "$tool" >/dev/null || die "$tool is required"
done

# mkectl parses and validates the pins and refuses any artifact whose
# checksum is not filled in, so no unverified download is ever attempted.
plan="$("$mkectl" bundle plan --versions "$versions" --arch "$arch")" \
  || die "the pins file is incomplete or invalid (see above)"

# Anything in the cache that is not a pinned artifact would be refused by
# `bundle create` (it bundles only pinned files here); say so up front.
expected="$(printf '%s\n' "$plan" | cut -f5 | sort)"
for f in "$cache"/* "$cache"/.[!.]*; do
  [ -e "$f" ] || continue
  name="$(basename "$f")"
  case "$name" in *.part) rm -f "$f"; continue ;; esac
  printf '%s\n' "$expected" | grep -qxF "$name" || die "$f is not a pinned artifact for $arch; remove it"
done

verify() { # algorithm digest file
  printf '%s  %s\n' "$2" "$3" | "${1}sum" --check --quiet --strict -
}

while IFS=$'\t' read -r component url algorithm digest file; do
  [ -n "$digest" ] || die "$component: empty checksum for $url"
  target="$cache/$file"
  if [ -f "$target" ] && verify "$algorithm" "$digest" "$target" 2>/dev/null; then
    echo "ok      $component  $file (cached, $algorithm verified)"
    continue
  fi
  echo "fetch   $component  $url"
  rm -f "$target" "$target.part"
  curl --fail --location --silent --show-error --retry 3 --retry-delay 2 \
    --proto '=https' --tlsv1.2 --output "$target.part" "$url"
  if ! verify "$algorithm" "$digest" "$target.part"; then
    rm -f "$target.part"
    die "$component: $algorithm of $url does not match the pinned $digest; nothing was kept"
  fi
  mv "$target.part" "$target"
  echo "ok      $component  $file ($algorithm verified)"
done <<< "$plan"

"$mkectl" bundle create --from-dir "$cache" --versions "$versions" --arch "$arch" \
  --require-all --mkectl "$mkectl" --output "$output"
# Read the result back completely (works for a foreign --arch too).
"$mkectl" bundle verify "$output"
