#!/usr/bin/env bash
# Installs the real Kosmos clustertree cluster-manager and the Kosmos CRDs where the tests and
# `kpromote-testenv demo` look for them: ~/.cache/kpromote/kosmos/current/{clustertree-cluster-manager,crds/}
# (or under $XDG_CACHE_HOME). Prints that directory. kpromote itself never needs them.
#
# Sources, first found:
#   1. a kit directory: $KPROMOTE_KOSMOS_KIT, else ../shared/kosmos beside the checkout, else
#      /work/shared/kosmos. A kit holds `clustertree-cluster-manager` (or `.zst`) and `crds/`.
#   2. a Kosmos source clone: $KOSMOS_SRC (needs its vendored modules; on a machine with internet):
#        git clone https://github.com/kosmos-io/kosmos && git -C kosmos checkout df846c34
#        KOSMOS_SRC=$PWD/kosmos tests/testenv/kosmos.sh
#      which runs `GOFLAGS=-mod=vendor go build ./cmd/clustertree/cluster-manager` and copies
#      `deploy/crds/` — the same build the kit's binary came from.
# Tests read KPROMOTE_KOSMOS_BIN / KPROMOTE_KOSMOS_CRDS first when set.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${XDG_CACHE_HOME:-$HOME/.cache}/kpromote/kosmos
bin=clustertree-cluster-manager

publish() { ln -sfn "$1" "$cache/current"; echo "$cache/$1"; }

kit=${KPROMOTE_KOSMOS_KIT:-}
if [ -z "$kit" ]; then
  for candidate in "$here/../../../shared/kosmos" /work/shared/kosmos; do
    if [ -d "$candidate/crds" ]; then kit=$(cd "$candidate" && pwd); break; fi
  done
fi

mkdir -p "$cache"
if [ -n "$kit" ]; then
  if [ -f "$kit/$bin.zst" ]; then src="$kit/$bin.zst"; else src="$kit/$bin"; fi
  [ -f "$src" ] && [ -d "$kit/crds" ] || { echo "kosmos kit $kit lacks $bin[.zst] or crds/" >&2; exit 1; }
  key=kit-$(sha256sum "$src" | cut -c1-12)
  dest="$cache/$key"
  if [ -x "$dest/$bin" ] && [ -d "$dest/crds" ]; then publish "$key"; exit 0; fi
  rm -rf "$dest.tmp" && mkdir -p "$dest.tmp"
  case "$src" in
    *.zst) zstd -dqf "$src" -o "$dest.tmp/$bin" ;;
    *) cp "$src" "$dest.tmp/$bin" ;;
  esac
  chmod +x "$dest.tmp/$bin"
  cp -r "$kit/crds" "$dest.tmp/crds"
elif [ -n "${KOSMOS_SRC:-}" ]; then
  key=src-$(git -C "$KOSMOS_SRC" rev-parse --short=12 HEAD)
  dest="$cache/$key"
  if [ -x "$dest/$bin" ] && [ -d "$dest/crds" ]; then publish "$key"; exit 0; fi
  rm -rf "$dest.tmp" && mkdir -p "$dest.tmp"
  (cd "$KOSMOS_SRC" && GOFLAGS=-mod=vendor GOTOOLCHAIN=local go build -o "$dest.tmp/$bin" ./cmd/clustertree/cluster-manager) >&2
  cp -r "$KOSMOS_SRC/deploy/crds" "$dest.tmp/crds"
else
  cat >&2 <<MSG
No Kosmos clustertree found. Set KPROMOTE_KOSMOS_KIT to a kit directory (clustertree-cluster-manager[.zst]
and crds/), or KOSMOS_SRC to a kosmos-io/kosmos clone (see the top of $0).
MSG
  exit 1
fi
rm -rf "$dest" && mv "$dest.tmp" "$dest"
publish "$key"
