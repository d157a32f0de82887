#!/usr/bin/env bash
# Builds krew (the kubectl plugin manager) from the Go module proxy into a cache directory keyed
# by go.mod, go.sum and this script, like ../helm/build.sh. Prints the bin directory on stdout,
# which holds `kubectl-krew`; `krew/current` points at it.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/../go-tool.sh"
go_tool_cache "$here" sigs.k8s.io/krew "${KPROMOTE_KREW_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kpromote/krew}" kubectl-krew
echo "building krew $version into $bin (cold: about a minute)" >&2
go build -p "$(nproc)" -ldflags "-s -w -X sigs.k8s.io/krew/internal/version.gitTag=$version" \
  -o "$bin.tmp/kubectl-krew" sigs.k8s.io/krew/cmd/krew >&2
go_tool_publish
