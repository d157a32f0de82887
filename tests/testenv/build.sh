#!/usr/bin/env bash
# Builds the real Kubernetes components kpromote's cluster tests run against
# (kube-apiserver, kube-controller-manager, kubectl, etcd) from the Go module
# proxy, into a cache directory keyed by the pinned version and go.sum, so a
# second run reuses them in seconds. Prints the bin directory on stdout.
# Helm and krew, which the chart and plugin tests run, and versitygw, the S3-compatible server of
# the object storage tests, are built first by helm/build.sh, krew/build.sh and s3/build.sh (each
# with its own cache).
# First it installs the machine tools the tests call (openssl, zstd, gzip, tar, age; podman and
# runc for the image test) with apt-get when it runs as root on a Debian-like machine; elsewhere it
# names in one line what to install and stops before building anything. Go and Rust it only
# checks: their versions come from go.dev and rustup, not the distribution.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

# Debian package name = command name for each. runc because podman's default runtime, crun,
# refuses these machines' hybrid cgroups (tests/image.rs runs podman --runtime runc). age (with
# age-keygen) is the reference implementation the sealed-archive tests decrypt with.
packages=()
for tool in openssl zstd gzip tar podman runc age; do command -v "$tool" >/dev/null || packages+=("$tool"); done
if [ ${#packages[@]} -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing ${packages[*]} with apt-get" >&2
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}" >&2
  packages=()
fi
missing=("${packages[@]}")
command -v go >/dev/null || missing+=("go (go.dev/dl)")
command -v cargo >/dev/null || missing+=("cargo (rustup.rs)")
if [ ${#missing[@]} -gt 0 ]; then
  list=$(printf '%s, ' "${missing[@]}")
  echo "the tests need ${list%, }${packages[*]:+ (as root: apt-get install ${packages[*]})}; install them and run $0 again" >&2
  exit 1
fi
version=$(awk '$1=="k8s.io/kubernetes" && $2 ~ /^v1\./ {print $2; exit}' "$here/go.mod")
# Relative names: the key must not depend on where the checkout lives.
key=$(cd "$here" && sha256sum go.mod go.sum | sha256sum | cut -c1-12)
cache=${KPROMOTE_TESTENV_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kpromote/testenv}
bin="$cache/$version-$key/bin"
tools=(kube-apiserver kube-controller-manager kubectl etcd)

"$here/helm/build.sh" >/dev/null
"$here/krew/build.sh" >/dev/null
"$here/s3/build.sh" >/dev/null

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
