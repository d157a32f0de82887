#!/usr/bin/env bash
# Reproduces the archive figures in benches/RESULTS.md.
#
#   crates/archive/benches/archive.sh                 # 10k and 100k objects
#   N_LIST="100000" RUNS=5 crates/archive/benches/archive.sh
#
# Needs: cargo, GNU tar, zstd, gzip, sha256sum, /usr/bin/time. Builds in release mode. Every
# timed command runs RUNS times (default 3); the median wall time is reported. Peak RSS comes
# from /usr/bin/time (%M, KiB) of the whole process.
set -euo pipefail

N_LIST=${N_LIST:-"10000 100000"}
RUNS=${RUNS:-3}
WORK=${WORK:-$(mktemp -d /var/tmp/kpromote-bench.XXXXXX)}
cd "$(dirname "$0")/../../.."

echo "# build"
cargo build --release --bin kpromote 2>&1 | tail -1
TOOL=$(cargo bench -p kpromote-archive --bench archive_tool --no-run 2>&1 | sed -n 's/.*Executable .*(\(.*archive_tool-[0-9a-f]*\)).*/\1/p' | tail -1)
KPROMOTE=${CARGO_TARGET_DIR:-target}/release/kpromote
echo "tool: $TOOL"
echo "work: $WORK"
echo "host: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); load: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "zstd: $(zstd --version | head -1); tar: $(tar --version | head -1)"

# median wall seconds, median CPU seconds (user+sys) and max RSS (MiB) of RUNS runs of a shell
# command. CPU time is reported because a shared machine makes wall time noisy.
measure() {
  local label=$1; shift
  local times=() cpus=() rss=0
  for _ in $(seq "$RUNS"); do
    /usr/bin/time -o "$WORK/.time" -f '%e %M %U %S' bash -c "$*" >/dev/null 2>"$WORK/.stderr" \
      || { echo "FAILED: $*"; cat "$WORK/.stderr"; }
    read -r wall kib user sys < <(tail -1 "$WORK/.time")
    times+=("$wall")
    cpus+=("$(echo "$user + $sys" | bc -l)")
    (( kib > rss )) && rss=$kib
  done
  local mid=$(( (RUNS + 1) / 2 ))
  local wall_median cpu_median
  wall_median=$(printf '%s\n' "${times[@]}" | sort -n | sed -n "${mid}p")
  cpu_median=$(printf '%s\n' "${cpus[@]}" | sort -n | sed -n "${mid}p")
  printf '%-46s wall %6.2f s  cpu %6.2f s  peak RSS %6.1f MiB  (wall runs: %s)\n' \
    "$label" "$wall_median" "$cpu_median" "$(echo "$rss/1024" | bc -l)" "${times[*]}"
}

for N in $N_LIST; do
  echo
  echo "## $N objects"
  CORPUS=$WORK/corpus-$N
  if [ ! -f "$CORPUS.done" ]; then
    rm -rf "$CORPUS"; mkdir -p "$CORPUS"
    "$TOOL" gen-dir "$CORPUS" "$N"
    touch "$CORPUS.done"
  fi
  du -sb "$CORPUS" | awk '{printf "corpus on disk: %d bytes (apparent)\n", $1}'
  tar -cf - -C "$CORPUS" . >/dev/null   # warm the page cache

  echo "### write (files -> archive)"
  measure "baseline: tar -cf - DIR | zstd -3" "tar -cf - -C $CORPUS . | zstd -3 -q -c > $WORK/base-$N.tar.zst"
  measure "kpromote writer, zstd -3, from files" "$TOOL write-dir $CORPUS $WORK/ours-$N.tar.zst"
  measure "baseline: tar -cf - DIR | gzip -6" "tar -cf - -C $CORPUS . | gzip -6 -c > $WORK/base-$N.tar.gz"
  measure "kpromote writer, gzip -6, from files" "$TOOL write-dir $CORPUS $WORK/ours-$N.tar.gz gz"
  measure "object generation only (no writer)" "$TOOL gen-only $N"
  measure "kpromote writer, zstd -3, generated objects" "$TOOL write-gen $N $WORK/gen-$N.tar.zst"
  ls -l "$WORK/base-$N.tar.zst" "$WORK/ours-$N.tar.zst" "$WORK/base-$N.tar.gz" "$WORK/ours-$N.tar.gz" | awk '{printf "  %12d  %s\n", $5, $9}'

  echo "### inspect"
  measure "kpromote inspect (CLI, whole process)" "$KPROMOTE inspect $WORK/ours-$N.tar.zst"
  measure "ArchiveReader::open + summary (tool)" "$TOOL inspect $WORK/ours-$N.tar.zst"

  echo "### verify"
  measure "baseline: zstd -dc ARCHIVE | sha256sum" "zstd -dc $WORK/ours-$N.tar.zst | sha256sum"
  measure "kpromote verify (CLI)" "$KPROMOTE verify $WORK/ours-$N.tar.zst"
  measure "ArchiveReader::verify (tool)" "$TOOL verify $WORK/ours-$N.tar.zst"
  measure "baseline: gzip -dc ARCHIVE | sha256sum" "gzip -dc $WORK/ours-$N.tar.gz | sha256sum"
  measure "kpromote verify (CLI), gzip" "$KPROMOTE verify $WORK/ours-$N.tar.gz"

  echo "### read every object (restore path)"
  echo "load: $(cut -d' ' -f1-3 /proc/loadavg)"
  measure "ArchiveReader::objects (tool)" "$TOOL read $WORK/ours-$N.tar.zst"
done
