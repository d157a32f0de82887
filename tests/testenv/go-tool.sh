# Sourced by helm/build.sh and krew/build.sh: the cache both use for a Go tool built from the
# module proxy. `go_tool_cache DIR MODULE CACHE BINARY` sets `version` (MODULE's version in
# DIR/go.mod) and `bin` (a directory keyed by DIR's go.mod, go.sum and build.sh, so a changed
# pin or flag builds anew); when BINARY is already there it prints `bin` and exits, otherwise it
# leaves the shell in DIR with `$bin.tmp` made and the Go environment set for a static build.
# Finish with `go_tool_publish` once the binary is in `$bin.tmp`.
go_tool_cache() {
  local dir=$1 module=$2 binary=$4
  cache=$3
  version=$(awk -v m="$module" '$1==m {print $2; exit}' "$dir/go.mod")
  # Relative names: the key must not depend on where the checkout lives. The build script is
  # part of the key: its flags change the binary.
  key=$(cd "$dir" && sha256sum go.mod go.sum build.sh | sha256sum | cut -c1-12)
  bin="$cache/$version-$key/bin"
  if [ -x "$bin/$binary" ]; then
    ln -sfn "$version-$key" "$cache/current"
    echo "$bin"
    exit 0
  fi
  export GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0
  mkdir -p "$bin.tmp"
  cd "$dir"
}

go_tool_publish() {
  rm -rf "$bin" && mv "$bin.tmp" "$bin"
  ln -sfn "$version-$key" "$cache/current"
  echo "$bin"
}
