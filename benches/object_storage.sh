#!/usr/bin/env bash
# Bytes fetched from object storage by `kpromote show` and `kpromote inspect` of an archive of N
# objects (default 100,000), against the real S3-compatible server of the tests (versitygw, built
# by tests/testenv/s3/build.sh). Counted on the client side: kpromote logs the bytes and requests
# of its ranged reads at debug level when it exits.
#
#   benches/object_storage.sh            # N=100000
#   N=10000 benches/object_storage.sh
#
# Needs: cargo, curl. The archive is written by the archive benchmark's tool (`write-gen`, the
# objects of crates/archive/benches/archive.sh) and placed in the bucket directory the posix
# backend serves.
set -euo pipefail
N=${N:-100000}
WORK=${WORK:-$(mktemp -d /var/tmp/kpromote-s3-bench.XXXXXX)}
cd "$(dirname "$0")/.."

# Bytes fetched do not depend on the build profile: KPROMOTE=target/debug/kpromote skips the
# release build.
if [ -z "${KPROMOTE:-}" ]; then
  cargo build --release --bin kpromote 2>&1 | tail -1
  KPROMOTE=${CARGO_TARGET_DIR:-target}/release/kpromote
fi
TOOL=$(cargo bench -p kpromote-archive --bench archive_tool --no-run 2>&1 | sed -n 's/.*Executable .*(\(.*archive_tool-[0-9a-f]*\)).*/\1/p' | tail -1)
S3=$(tests/testenv/s3/build.sh)/versitygw

mkdir -p "$WORK/buckets/kp-bench"
[ -f "$WORK/gen-$N.tar.zst" ] || "$TOOL" write-gen "$N" "$WORK/gen-$N.tar.zst" >/dev/null
cp "$WORK/gen-$N.tar.zst" "$WORK/buckets/kp-bench/gen-$N.tar.zst"
size=$(stat -c %s "$WORK/gen-$N.tar.zst")

port=$(( 20000 + RANDOM % 20000 ))
secret=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
ROOT_ACCESS_KEY_ID=kpbench ROOT_SECRET_ACCESS_KEY=$secret "$S3" --port "127.0.0.1:$port" --quiet posix "$WORK/buckets" &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null' EXIT
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.1; done

export AWS_ENDPOINT_URL=http://127.0.0.1:$port AWS_REGION=us-east-1 AWS_ACCESS_KEY_ID=kpbench AWS_SECRET_ACCESS_KEY=$secret
url=s3://kp-bench/gen-$N.tar.zst
# One object from the middle of the archive.
object=$("$KPROMOTE" inspect "$url" --list -o json | grep -o '"path":"resources/[^"]*"' | sed -n "$(( N / 2 ))p" | cut -d'"' -f4)

fetched() { RUST_LOG=kpromote=debug "$KPROMOTE" "$@" 2>&1 >/dev/null | grep -o '"bytes":[0-9]*,"requests":[0-9]*\|bytes=[0-9]* requests=[0-9]*' | tail -1; }
echo "archive: $N objects, $size bytes; object: $object"
echo "inspect:      $(fetched inspect "$url")"
echo "show 1 obj:   $(fetched show "$url" "$object" -o json)"
