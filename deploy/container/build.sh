#!/usr/bin/env bash
# Builds the rill container image (deploy/container/Containerfile) with Debian's buildah (or
# podman): a static x86_64 musl build of `rill` (needs `rustup target add
# x86_64-unknown-linux-musl` and Debian's musl-tools), the host's CA certificates, and with
# --bake the default model from RILL_HOME (pulled first if absent).
#   deploy/container/build.sh [--bake] [TAG]     (default tag localhost/rill:latest)
set -euo pipefail
cd "$(dirname "$0")/../.."
bake=0
if [ "${1:-}" = --bake ]; then bake=1; shift; fi
tag=${1:-localhost/rill:latest}
tool=$(command -v buildah || command -v podman || true)
[ -n "$tool" ] || { echo "build.sh: buildah or podman is needed (Debian: apt-get install buildah)" >&2; exit 1; }
command -v musl-gcc >/dev/null || { echo "build.sh: musl-gcc is needed (Debian: apt-get install musl-tools)" >&2; exit 1; }
rustup target list --installed | grep -q x86_64-unknown-linux-musl \
  || { echo "build.sh: run: rustup target add x86_64-unknown-linux-musl" >&2; exit 1; }
[ -f /etc/ssl/certs/ca-certificates.crt ] || { echo "build.sh: no /etc/ssl/certs/ca-certificates.crt (Debian: apt-get install ca-certificates)" >&2; exit 1; }

target=${CARGO_TARGET_DIR:-target}
cargo build --release --target x86_64-unknown-linux-musl -p rill
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
cp "$target/x86_64-unknown-linux-musl/release/rill" "$ctx/rill"
cp /etc/ssl/certs/ca-certificates.crt "$ctx/"
mkdir -p "$ctx/models-empty" "$ctx/models"
models=models-empty
if [ $bake = 1 ]; then
  "$ctx/rill" pull >/dev/null
  home=${RILL_HOME:-$HOME/.cache/rill}
  cp "$home"/models/*.gguf "$ctx/models/" 2>/dev/null || true
  rm -f "$ctx"/models/gemma* # the default model only
  models=models
fi
if [ "$(basename "$tool")" = buildah ]; then
  buildah build --isolation chroot --build-arg MODELS=$models -f deploy/container/Containerfile -t "$tag" "$ctx"
else
  podman build --build-arg MODELS=$models -f deploy/container/Containerfile -t "$tag" "$ctx"
fi
echo "built $tag ($("$tool" images --format '{{.Size}}' "$tag" 2>/dev/null | head -1))"
