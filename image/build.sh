#!/bin/sh
# Builds Tally's runtime image offline with buildah, from a `tally` binary built on
# this machine: the image the Containerfile's runtime stage makes (the files come from
# image/rootfs.sh), with no base image and no network.
#
#   image/build.sh [BINARY]      (default: $CARGO_TARGET_DIR/debug/tally)
#
# The image is tagged ghcr.io/tally-dev/tally:<appVersion of charts/tally/Chart.yaml>
# (the chart's default image) and exported as an OCI layout directory and an
# oci-archive under $TALLY_IMAGE_CACHE (default $HOME/.cache/tally/image), in a
# directory named after the binary's SHA-256: a second run with the same binary does
# nothing. The last line printed is the OCI layout's path.
#
# buildah runs as root with the vfs storage driver and its own storage under the
# cache directory (nothing touches the system's image store); no RUN step is needed,
# so no container is ever started.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
binary=${1:-${CARGO_TARGET_DIR:-$repo/target}/debug/tally}
cache=${TALLY_IMAGE_CACHE:-$HOME/.cache/tally/image}

[ -f "$binary" ] || { echo "$0: no tally binary at $binary (cargo build -p tally)" >&2; exit 1; }
command -v buildah >/dev/null || { echo "$0: buildah is not installed (apt-get install buildah)" >&2; exit 1; }

version=$(sed -n 's/^appVersion:[[:space:]]*"\{0,1\}\([^"[:space:]]*\)"\{0,1\}[[:space:]]*$/\1/p' "$repo/charts/tally/Chart.yaml")
[ -n "$version" ] || { echo "$0: no appVersion in charts/tally/Chart.yaml" >&2; exit 1; }
repository=ghcr.io/tally-dev/tally
tag=$repository:$version
source_url=https://github.com/tally-dev/tally

# The key: the binary, the version and the files that define the image.
key=$(cat "$binary" "$here/rootfs.sh" "$here/build.sh" | sha256sum | cut -c1-32)-$version
out=$cache/$key
layout=$out/oci
if [ -f "$out/done" ]; then
    echo "$layout"
    exit 0
fi

# One build at a time (concurrent callers share the storage and the output): the
# later one finds the image made.
mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9
if [ -f "$out/done" ]; then
    echo "$layout"
    exit 0
fi
work=$(mktemp -d "$cache/.build-XXXXXX")
storage=$cache/.storage
ctr=
cleanup() {
    if [ -n "$ctr" ]; then
        buildah --root "$storage/root" --runroot "$storage/run" --storage-driver vfs rm "$ctr" >/dev/null 2>&1 || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

b() {
    buildah --root "$storage/root" --runroot "$storage/run" --storage-driver vfs "$@"
}

# The root filesystem, as one tar (numeric owners kept: /home/nonroot is 65532's).
"$here/rootfs.sh" "$binary" "$work/rootfs" >&2
tar --numeric-owner --sort=name --mtime=@0 -C "$work/rootfs" -cf "$work/rootfs.tar" .

ctr=$(b from --pull=never scratch)
b add "$ctr" "$work/rootfs.tar" / >&2
b config \
    --user 65532:65532 \
    --entrypoint '["/usr/local/bin/tally"]' \
    --cmd '' \
    --workingdir / \
    --env PATH=/usr/local/bin \
    --label org.opencontainers.image.source=$source_url \
    --label org.opencontainers.image.version=$version \
    --label org.opencontainers.image.title=tally \
    --label org.opencontainers.image.description="Tally: experiment metrics on Kubernetes" \
    --label org.opencontainers.image.licenses=Apache-2.0 \
    --os linux --arch amd64 \
    "$ctr" >&2
b commit --quiet --format oci --timestamp 0 --rm "$ctr" "$tag" >&2
ctr=

rm -rf "$out"
mkdir -p "$out"
b push --quiet --format oci "$tag" "oci:$layout:$tag" >&2
b push --quiet --format oci "$tag" "oci-archive:$out/tally.oci.tar:$tag" >&2
# The build's local copy is not needed again (the layout is the cache).
b rmi "$tag" >/dev/null 2>&1 || true
echo "$tag" > "$out/done"
# Keep the newest few images (each holds a copy of the binary, twice, and the node
# agent's unpacked root beside it); older binaries' images go.
# (Under the lock, a directory without `done` is what a failed build left.)
ls -1dt "$cache"/*/ 2>/dev/null | tail -n +5 | while read -r old; do
    rm -rf "$old"
done
for old in "$cache"/*/; do
    [ -f "$old/done" ] || rm -rf "$old"
done
echo "$layout"
