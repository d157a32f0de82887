#!/usr/bin/env bash
# Builds versitygw, a real S3-compatible server (its posix backend keeps objects as files), from
# the Go module proxy into a cache directory keyed by go.mod, go.sum and this script, like
# ../helm/build.sh. Prints the bin directory on stdout, which holds `versitygw`; `s3/current`
# points at it. The object storage tests start it through crates/testenv (`S3Server`).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/../go-tool.sh"
go_tool_cache "$here" github.com/versity/versitygw "${KPROMOTE_S3_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kpromote/s3}" versitygw
echo "building versitygw $version into $bin (cold: about two minutes)" >&2
go build -p "$(nproc)" -ldflags "-s -w" -o "$bin.tmp/versitygw" github.com/versity/versitygw/cmd/versitygw >&2
go_tool_publish
