#!/usr/bin/env bash
# Packages a kpromote binary as the kubectl plugin `promote` for krew: an archive holding
# `kubectl-promote` (the same binary: it calls itself `kubectl promote` under that name) and a
# README, and the krew manifest `promote.yaml` naming that archive with its SHA-256.
# Usage: deploy/krew/package.sh BINARY OUT_DIR [BASE_URL]
#   BASE_URL: where the archive will be published (default: the GitHub release of this version).
# Install from the result without a krew index:
#   kubectl krew install --manifest=OUT_DIR/promote.yaml --archive=OUT_DIR/kpromote-linux-amd64.tar.gz
set -euo pipefail
binary=$1 out=$2
root=$(cd "$(dirname "$0")/../.." && pwd)
version=v$(awk -F'"' '/^version = / {print $2; exit}' "$root/Cargo.toml")
base=${3:-https://github.com/kosmos-io/kpromote/releases/download/$version}
os=linux arch=amd64
archive=kpromote-$os-$arch.tar.gz
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
install -m 0755 "$binary" "$stage/kubectl-promote"
cat >"$stage/README.md" <<'TXT'
kubectl-promote: `kubectl promote --help`. The same binary is `kpromote` under that name.
TXT
mkdir -p "$out"
# Reproducible: fixed order, owner and time.
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$stage" -cf - kubectl-promote README.md \
  | gzip -n >"$out/$archive"
sha=$(sha256sum "$out/$archive" | cut -d' ' -f1)
cat >"$out/promote.yaml" <<YAML
apiVersion: krew.googlecontainertools.github.com/v1alpha2
kind: Plugin
metadata:
  name: promote
spec:
  version: $version
  homepage: https://github.com/kosmos-io/kpromote
  shortDescription: Move running apps from a Kosmos member cluster into the control plane
  description: |
    Promotes every application of chosen namespaces from a Kosmos member cluster into the Kosmos
    control plane without restarting a pod, and rolls them back from the verified archive it
    made. Also inspects, verifies and diffs archives offline, and reports where an interrupted
    run stands (kubectl promote status ARCHIVE).
  caveats: |
    kubectl promote talks to the control plane through --kubeconfig/--context (as kubectl does)
    and to the member through --member-kubeconfig/--member-context.
  platforms:
    - selector:
        matchLabels:
          os: $os
          arch: $arch
      uri: $base/$archive
      sha256: $sha
      bin: kubectl-promote
      files:
        - from: kubectl-promote
          to: .
        - from: README.md
          to: .
YAML
echo "$out/promote.yaml"
