#!/usr/bin/env bash
# Installs what the e2e cluster needs from Debian (bookworm): etcd, containerd, runc, busybox-static,
# the kubernetes source package (1.20.2, with vendor/), and the Go that builds it as released: Go 1.15 from
# Debian 11 (bullseye), the release that shipped kubernetes 1.20.2 and built it with that Go. Its vendored
# modules (reflect2 v1.0.1 reads Go runtime internals that changed in 1.18) do not work with bookworm's
# Go 1.19, and the source is built unmodified. Idempotent.
source "$(dirname "$0")/lib.sh"

need_pkgs=(etcd-server containerd runc busybox-static golang-1.15-go dpkg-dev
  gcc libc6-dev iptables iproute2 smbclient openssl jq containernetworking-plugins)
missing=()
for p in "${need_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done

# add_source FILE TYPES SUITE: a deb822 entry for deb.debian.org's main, written once (then apt-get update).
add_source() {
  [[ -f $1 ]] && return 0
  log "adding a $2 entry for $3"
  cat >"$1" <<SRC
Types: $2
URIs: http://deb.debian.org/debian
Suites: $3
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  apt_updated=0
}
add_source /etc/apt/sources.list.d/smb3-csi-e2e-src.sources deb-src bookworm
# Bullseye only for what bookworm lacks (golang-1.15-go and its -src): pinned below every bookworm package,
# the pin written before the source.
bullseye_pin=/etc/apt/preferences.d/smb3-csi-e2e-bullseye
if [[ ! -f $bullseye_pin ]]; then
  cat >"$bullseye_pin" <<'PIN'
Package: *
Pin: release n=bullseye
Pin-Priority: 100
PIN
fi
add_source /etc/apt/sources.list.d/smb3-csi-e2e-bullseye.sources deb bullseye

# The kubernetes source is built as the package ships it. A tree cached without this stamp came from earlier
# versions of these scripts, which edited it: it is fetched again, with the openapi-gen built from it.
as_shipped=$E2E_CACHE/src/.as-shipped
if [[ -d $E2E_CACHE/src && ! -f $as_shipped ]]; then
  log "the cached kubernetes source has no $as_shipped stamp: fetching it again"
  rm -rf "$E2E_CACHE/src" "$E2E_CACHE/openapi-gen"
fi
if (( ${#missing[@]} )) || [[ -n ${apt_updated+x} ]] || [[ ! -d $E2E_CACHE/src ]]; then
  log "apt-get update"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
fi
if (( ${#missing[@]} )); then
  log "installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

mkdir -p "$E2E_CACHE/src"
if ! ls -d "$E2E_CACHE"/src/kubernetes-* >/dev/null 2>&1; then
  log "fetching the kubernetes source package"
  (cd "$E2E_CACHE/src" && apt-get source -qq kubernetes)
  touch "$as_shipped"
fi
ls -d "$E2E_CACHE"/src/kubernetes-* >/dev/null || die "kubernetes source not found in $E2E_CACHE/src"
log "install done"
