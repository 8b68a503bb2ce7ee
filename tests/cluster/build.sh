#!/usr/bin/env bash
# Builds the control plane the end-to-end tests run on (etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler) from the upstream Go modules pinned in
# go.mod, into
#
#   ${TALLY_CLUSTER_CACHE:-$HOME/.cache/tally/control-plane}/<key>/bin
#
# where <key> is the first 16 hex digits of the sha256 of go.mod, go.sum, the cmd/
# sources and this script (its build flags). A key whose four binaries exist is not built again. The build goes to
# a temporary directory that is renamed into place once complete, so an interrupted
# build never leaves a partial cache entry. Go's own module and build caches are the
# defaults (GOMODCACHE, GOCACHE), so a changed key still reuses compiled packages.
#
# The last line on stdout is the bin directory; progress goes to stderr. Exit status
# 3: Go is not installed (and nothing is cached).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

binaries=(etcd kube-apiserver kube-controller-manager kube-scheduler)

key="$(
    {
        for f in go.mod go.sum build.sh $(find cmd -type f -name '*.go' | LC_ALL=C sort); do
            printf '%s\0' "$f"
            cat "$f"
            printf '\0'
        done
    } | sha256sum | cut -c1-16
)"
cache="${TALLY_CLUSTER_CACHE:-$HOME/.cache/tally/control-plane}"
dest="$cache/$key"

complete() {
    local b
    for b in "${binaries[@]}"; do
        [[ -x "$1/bin/$b" ]] || return 1
    done
}

if complete "$dest"; then
    echo "$dest/bin"
    exit 0
fi

# Exit status 3 tells a caller that only the Go toolchain is missing.
if ! command -v go >/dev/null 2>&1; then
    echo "build.sh: go is not installed: it builds the control plane" >&2
    exit 3
fi

mkdir -p "$cache"
tmp="$(mktemp -d "$cache/.build-$key.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

# The version the binaries report (/version, --version), stamped as upstream's release
# builds do: the k8s.io/kubernetes version go.mod requires.
version="$(awk '$1 == "k8s.io/kubernetes" { print $2 }' go.mod)"
if [[ ! "$version" =~ ^v([0-9]+)\.([0-9]+)\.[0-9]+$ ]]; then
    echo "build.sh: no k8s.io/kubernetes release version in go.mod: '$version'" >&2
    exit 1
fi
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$version"
    ldflags+=" -X $pkg.gitMajor=${BASH_REMATCH[1]} -X $pkg.gitMinor=${BASH_REMATCH[2]}"
    ldflags+=" -X $pkg.gitTreeState=clean"
done

echo "build.sh: building the control plane $version ($key) in $tmp" >&2
start=$SECONDS
# CGO off: static binaries, no C toolchain needed (upstream builds these the same way).
CGO_ENABLED=0 go build -buildvcs=false -trimpath -ldflags="$ldflags" \
    -o "$tmp/bin/" ./cmd/...
complete "$tmp"
echo "build.sh: built in $((SECONDS - start)) s" >&2

# An entry left incomplete by hand (binaries deleted) is replaced; one that a
# concurrent build completed first is kept and ours dropped.
if [[ -e "$dest" ]] && ! complete "$dest"; then
    rm -rf "$dest"
fi
if ! mv -T "$tmp" "$dest" 2>/dev/null; then
    complete "$dest" || {
        echo "build.sh: cannot move the build to $dest" >&2
        exit 1
    }
fi

echo "$dest/bin"
