#!/usr/bin/env bash
# Builds the real Kubernetes components kpromote's cluster tests run against
# (kube-apiserver, kube-controller-manager, kubectl, etcd) from the Go module
# proxy, into a cache directory keyed by the pinned version and go.sum, so a
# second run reuses them in seconds. Prints the bin directory on stdout.
# Helm and krew, which the chart and plugin tests run, are built first by helm/build.sh and
# krew/build.sh (each with its own cache).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
version=$(awk '$1=="k8s.io/kubernetes" && $2 ~ /^v1\./ {print $2; exit}' "$here/go.mod")
# Relative names: the key must not depend on where the checkout lives.
key=$(cd "$here" && sha256sum go.mod go.sum | sha256sum | cut -c1-12)
cache=${KPROMOTE_TESTENV_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kpromote/testenv}
bin="$cache/$version-$key/bin"
tools=(kube-apiserver kube-controller-manager kubectl etcd)

"$here/helm/build.sh" >/dev/null
"$here/krew/build.sh" >/dev/null

have_all() { for t in "${tools[@]}"; do [ -x "$bin/$t" ] || return 1; done; }
# `current` points at the build matching this checkout; kpromote's launcher looks there first.
publish() { ln -sfn "$version-$key" "$cache/current"; echo "$bin"; }
# The real Kosmos clustertree for the Kosmos-in-the-loop tests: only a warning here (those tests
# fail loudly without it, naming the script); `.ci/run` runs it on its own and fails.
"$here/kosmos.sh" >/dev/null || echo "warning: no Kosmos clustertree installed; see tests/testenv/kosmos.sh" >&2
if have_all; then publish; exit 0; fi

export GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0
mkdir -p "$bin.tmp"
minor=${version#v1.}; minor=${minor%%.*}
ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$version \
-X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor"
cd "$here"
echo "building Kubernetes $version components into $bin (cold: ~15-25 min on 2 cores)" >&2
go build -p "$(nproc)" -ldflags "$ldflags" -o "$bin.tmp/" \
  k8s.io/kubernetes/cmd/kube-apiserver \
  k8s.io/kubernetes/cmd/kube-controller-manager \
  k8s.io/kubernetes/cmd/kubectl >&2
go build -p "$(nproc)" -ldflags "-s -w" -o "$bin.tmp/etcd" go.etcd.io/etcd/server/v3 >&2
rm -rf "$bin" && mv "$bin.tmp" "$bin"
publish
