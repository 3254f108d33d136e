#!/usr/bin/env bash
# The whole story on one fresh Debian/Ubuntu machine, as root: installs what is missing (Samba, smbclient,
# fuse3), builds smb3-csi (release), and runs `smb3-csi demo`: a private Samba requiring encryption,
# `smb3-csi all` on a temporary socket, then CreateVolume, NodeStage, NodePublish, a file written and read
# through the mount and fetched with smbclient, and unpublish, unstage, delete. Exit status tells success.
set -euo pipefail

if [[ $EUID -ne 0 ]]; then
  echo "demo.sh: run as root (it installs packages, starts smbd and mounts filesystems): sudo $0" >&2
  exit 1
fi

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

echo "==> Installing what is missing (scripts/setup.sh)"
bash scripts/setup.sh

if ! command -v cargo >/dev/null; then
  echo "demo.sh: cargo not found; install a Rust toolchain (https://rustup.rs) and run again" >&2
  exit 1
fi

if [[ ! -e /dev/fuse ]]; then
  modprobe fuse 2>/dev/null || true
fi

echo "==> Building smb3-csi (release)"
cargo build --release --features demo --bin smb3-csi

bin="${CARGO_TARGET_DIR:-$repo/target}/release/smb3-csi"
echo "==> Running: $bin demo"
exec "$bin" demo "$@"
