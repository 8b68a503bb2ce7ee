#!/bin/sh
# Assembles the runtime root filesystem of the Tally image in DEST from a built
# `tally` binary: the binary at /usr/local/bin/tally, exactly the shared libraries
# `ldd` says it loads (and the dynamic loader), the CA certificates, a non-root user
# 65532 (nonroot) in /etc/passwd and /etc/group, and /tmp.
#
# Used by the Containerfile's build stage and by image/build.sh, so both images hold
# the same files.
#
#   image/rootfs.sh BINARY DEST
set -eu

if [ $# -ne 2 ]; then
    echo "usage: $0 BINARY DEST" >&2
    exit 2
fi
binary=$1
dest=$2
certs=/etc/ssl/certs/ca-certificates.crt

[ -f "$binary" ] || { echo "$0: no binary at $binary" >&2; exit 1; }
[ -f "$certs" ] || { echo "$0: no CA certificates at $certs (install ca-certificates)" >&2; exit 1; }
if [ -e "$dest" ] && [ -n "$(ls -A "$dest")" ]; then
    echo "$0: $dest is not empty" >&2
    exit 1
fi

mkdir -p "$dest/usr/local/bin" "$dest/etc/ssl/certs" "$dest/tmp"
chmod 1777 "$dest/tmp"
install -m 0755 "$binary" "$dest/usr/local/bin/tally"

# Every library ldd resolves ("name => /path (addr)") and the loader ("/path (addr)"),
# copied (symlinks followed) to the same path. A library ldd cannot find is an error:
# the image would not start.
libs=$(ldd "$binary") || { echo "$0: ldd $binary failed (a static binary needs no libraries)" >&2; exit 1; }
if printf '%s\n' "$libs" | grep -q 'not found'; then
    echo "$0: $binary needs libraries this machine lacks:" >&2
    printf '%s\n' "$libs" | grep 'not found' >&2
    exit 1
fi
printf '%s\n' "$libs" | awk '
    $2 == "=>" && $3 ~ /^\// { print $3; next }
    $1 ~ /^\// { print $1 }
' | sort -u | while read -r lib; do
    mkdir -p "$dest$(dirname "$lib")"
    cp -L "$lib" "$dest$lib"
done

install -m 0644 "$certs" "$dest$certs"
cat > "$dest/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
PASSWD
cat > "$dest/etc/group" <<'GROUP'
root:x:0:
nobody:x:65534:
nonroot:x:65532:
GROUP
chmod 0644 "$dest/etc/passwd" "$dest/etc/group"
mkdir -p "$dest/home/nonroot"
chown 65532:65532 "$dest/home/nonroot"
chmod 0700 "$dest/home/nonroot"
