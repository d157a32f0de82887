#!/usr/bin/env bash
# Builds Helm from the Go module proxy into a cache directory keyed by the pinned version and
# go.sum (like ../build.sh does for the Kubernetes components), so later runs reuse it at once.
# Prints the bin directory on stdout; `helm/current` points at it.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
version=$(awk '$1=="helm.sh/helm/v3" {print $2; exit}' "$here/go.mod")
# Relative names: the key must not depend on where the checkout lives. This script is part of
# the key: its flags change the binary.
key=$(cd "$here" && sha256sum go.mod go.sum build.sh | sha256sum | cut -c1-12)
cache=${KPROMOTE_HELM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kpromote/helm}
bin="$cache/$version-$key/bin"

publish() { ln -sfn "$version-$key" "$cache/current"; echo "$bin"; }
if [ -x "$bin/helm" ]; then publish; exit 0; fi

export GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0
mkdir -p "$bin.tmp"
cd "$here"
echo "building Helm $version into $bin (cold: a few minutes on 2 cores)" >&2
# As Helm's Makefile: the default Kubernetes version of `helm template` and `helm lint` is the
# client-go minor it was built with (otherwise v1.20, which a chart's kubeVersion refuses).
k8s_minor=$(go list -m -f '{{.Version}}' k8s.io/client-go | cut -d. -f2)
go build -p "$(nproc)" -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$version \
-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$k8s_minor \
-X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$k8s_minor" \
  -o "$bin.tmp/helm" helm.sh/helm/v3/cmd/helm >&2
rm -rf "$bin" && mv "$bin.tmp" "$bin"
publish
