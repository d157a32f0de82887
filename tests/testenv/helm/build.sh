#!/usr/bin/env bash
# Builds Helm from the Go module proxy into a cache directory keyed by the pinned version and
# go.sum (like ../build.sh does for the Kubernetes components), so later runs reuse it at once.
# Prints the bin directory on stdout; `helm/current` points at it.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/../go-tool.sh"
go_tool_cache "$here" helm.sh/helm/v3 "${KPROMOTE_HELM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kpromote/helm}" helm
echo "building Helm $version into $bin (cold: a few minutes on 2 cores)" >&2
# As Helm's Makefile: the default Kubernetes version of `helm template` and `helm lint` is the
# client-go minor it was built with (otherwise v1.20, which a chart's kubeVersion refuses).
k8s_minor=$(go list -m -f '{{.Version}}' k8s.io/client-go | cut -d. -f2)
go build -p "$(nproc)" -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$version \
-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$k8s_minor \
-X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$k8s_minor" \
  -o "$bin.tmp/helm" helm.sh/helm/v3/cmd/helm >&2
go_tool_publish
