#!/usr/bin/env bash
# Builds the kpromote image with podman from a kpromote binary, without pulling any registry
# image: the base filesystem is unpacked from Debian packages (libc6, libgcc-s1, ca-certificates,
# netbase, tzdata — what distroless/cc holds) fetched with apt, plus a passwd naming the nonroot
# user 65532. Prints the image name.
# Usage: image/build.sh BINARY [IMAGE]   (default IMAGE: ghcr.io/kosmos-io/kpromote:<version>)
# Needs: podman (apt-get install podman runc), apt-get, dpkg-deb.
set -euo pipefail
binary=$1
here=$(cd "$(dirname "$0")" && pwd)
version=$(awk -F'"' '/^version = / {print $2; exit}' "$here/../Cargo.toml")
image=${2:-ghcr.io/kosmos-io/kpromote:$version}
base=localhost/kpromote-base:bookworm
packages=(libc6 libgcc-s1 ca-certificates netbase tzdata)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if ! podman image exists "$base"; then
  mkdir -p "$work/debs" "$work/rootfs"
  download() { (cd "$work/debs" && apt-get download -q -o APT::Sandbox::User=root "${packages[@]}" >&2); }
  # A machine whose package lists are missing or stale gets them first.
  download || { apt-get update -qq >&2 && download; }
  for deb in "$work"/debs/*.deb; do dpkg-deb -x "$deb" "$work/rootfs"; done
  # ca-certificates ships the certificates; its bundle is made by a maintainer script, so
  # concatenate them here as update-ca-certificates would.
  mkdir -p "$work/rootfs/etc/ssl/certs"
  find "$work/rootfs/usr/share/ca-certificates" -name '*.crt' -print0 | sort -z \
    | xargs -0 cat >"$work/rootfs/etc/ssl/certs/ca-certificates.crt"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' \
    >"$work/rootfs/etc/passwd"
  printf 'root:x:0:\nnonroot:x:65532:\n' >"$work/rootfs/etc/group"
  install -d -m 1777 "$work/rootfs/tmp"
  install -d -o 65532 -g 65532 "$work/rootfs/home/nonroot"
  rm -rf "$work/rootfs/usr/share/doc" "$work/rootfs/usr/share/man" "$work/rootfs/usr/share/lintian"
  tar --sort=name --numeric-owner --mtime=@0 -C "$work/rootfs" -cf "$work/base.tar" .
  podman import --quiet "$work/base.tar" "$base" >&2
fi
install -m 0755 "$binary" "$work/kpromote"
podman build --quiet --build-arg "BASE=$base" -f "$here/Containerfile" -t "$image" "$work" >&2
echo "$image"
