#!/usr/bin/env bash
# Installs what the e2e cluster needs from Debian (bookworm): etcd, containerd, runc, busybox-static,
# the kubernetes source package (1.20.2, with vendor/) and the Go pieces its build needs. Idempotent.
source "$(dirname "$0")/lib.sh"

need_pkgs=(etcd-server containerd runc busybox-static golang-github-modern-go-reflect2-dev dpkg-dev
  gcc libc6-dev iptables iproute2 smbclient openssl jq containernetworking-plugins)
missing=()
for p in "${need_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done

src_list=/etc/apt/sources.list.d/smb3-csi-e2e-src.sources
if [[ ! -f $src_list ]]; then
  log "adding a deb-src entry for bookworm"
  cat >"$src_list" <<'SRC'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  apt_updated=0
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
fi
ls -d "$E2E_CACHE"/src/kubernetes-* >/dev/null || die "kubernetes source not found in $E2E_CACHE/src"
log "install done"
