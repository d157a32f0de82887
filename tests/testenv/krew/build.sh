#!/usr/bin/env bash
# Builds krew (the kubectl plugin manager) from the Go module proxy into a cache directory keyed
# by go.mod, go.sum and this script, like ../helm/build.sh. Prints the bin directory on stdout,
# which holds `kubectl-krew`; `krew/current` points at it.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
version=$(awk '$1=="sigs.k8s.io/krew" {print $2; exit}' "$here/go.mod")
key=$(cd "$here" && sha256sum go.mod go.sum build.sh | sha256sum | cut -c1-12)
cache=${KPROMOTE_KREW_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kpromote/krew}
bin="$cache/$version-$key/bin"

publish() { ln -sfn "$version-$key" "$cache/current"; echo "$bin"; }
if [ -x "$bin/kubectl-krew" ]; then publish; exit 0; fi

export GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0
mkdir -p "$bin.tmp"
cd "$here"
echo "building krew $version into $bin (cold: about a minute)" >&2
go build -p "$(nproc)" -ldflags "-s -w -X sigs.k8s.io/krew/internal/version.gitTag=$version" \
  -o "$bin.tmp/kubectl-krew" sigs.k8s.io/krew/cmd/krew >&2
rm -rf "$bin" && mv "$bin.tmp" "$bin"
publish
