#!/usr/bin/env bash
# 1 GiB through the FUSE mount (dd bs=1M, conv=fsync for the write, a fresh mount for the read) next to
# smbclient put/get of the same file, in the same run, against a server you name:
#   scripts/bench-fuse.sh //HOST[:PORT]/SHARE CREDENTIALS_FILE [SIZE_MIB]
# Needs root, /dev/fuse, smbclient; builds the release binary.
set -euo pipefail
unc=${1:?usage: bench-fuse.sh //HOST[:PORT]/SHARE CREDENTIALS_FILE [SIZE_MIB]}
creds=${2:?credentials file}
mib=${3:-1024}
cd "$(dirname "$0")/.."
cargo build --release --quiet
bin=${CARGO_TARGET_DIR:-target}/release/smb3-csi
work=$(mktemp -d); mp=$work/mnt; mkdir -p "$mp"
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; umount "$mp" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
hostport=${unc#//}; hostport=${hostport%%/*}; share=${unc#//*/}
host=${hostport%%:*}; port=445; [ "$hostport" != "$host" ] && port=${hostport##*:}
mount_fuse() { "$bin" mount --credentials "$creds" "$unc" "$mp" & pid=$!
  for _ in $(seq 100); do mountpoint -q "$mp" && return; sleep 0.1; done; echo "mount failed" >&2; exit 1; }
umount_fuse() { kill -TERM "$pid"; wait "$pid" || true; pid=; }
rate() { awk -v b=$((mib * 1048576)) -v s="$1" 'BEGIN { printf "%.1f MiB/s", b / 1048576 / s }'; }
secs() { local t0=$(date +%s.%N); "$@" >/dev/null 2>&1; awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { print b - a }'; }

head -c $((mib * 1048576)) /dev/urandom > "$work/src.bin"
mount_fuse
w=$(secs dd if="$work/src.bin" of="$mp/bench-fuse.bin" bs=1M conv=fsync)
umount_fuse; sync; echo 3 > /proc/sys/vm/drop_caches
mount_fuse
r=$(secs dd if="$mp/bench-fuse.bin" of=/dev/null bs=1M)
rm -f "$mp/bench-fuse.bin"; umount_fuse
smb=(smbclient "//$host/$share" -p "$port" -A "$creds" --client-protection=encrypt)
p=$(secs "${smb[@]}" -c "put $work/src.bin bench-smbclient.bin")
g=$(secs "${smb[@]}" -c "get bench-smbclient.bin $work/back.bin")
"${smb[@]}" -c "del bench-smbclient.bin" >/dev/null 2>&1 || true
cmp "$work/src.bin" "$work/back.bin"
echo "size: ${mib} MiB"
echo "FUSE dd write (conv=fsync): $(rate "$w")   smbclient put: $(rate "$p")"
echo "FUSE dd read (fresh mount): $(rate "$r")   smbclient get: $(rate "$g")"
