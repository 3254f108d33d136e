#!/usr/bin/env bash
# Builds kube-apiserver, kube-controller-manager, kubelet and kubectl 1.20.2 from Debian's source
# package in GOPATH mode, plus the pause and busybox image tars. Results are cached under
# $E2E_CACHE/bin and $E2E_CACHE/images and reused when present.
source "$(dirname "$0")/lib.sh"

BINARIES=(kube-apiserver kube-controller-manager kubelet kubectl)
# Bump when the build changes: cached binaries are rebuilt. 1: Go 1.15, the source as the package ships it
# (install.sh fetches a tree again that earlier scripts edited).
BUILD_LEVEL=1
mkdir -p "$K8S_BIN" "$E2E_CACHE/images"

build_kubernetes() {
  local src gopath tree
  src=$(ls -d "$E2E_CACHE"/src/kubernetes-*/ 2>/dev/null | head -1)
  [[ -n $src ]] || die "no kubernetes source under $E2E_CACHE/src: run install.sh first"
  gopath=$E2E_CACHE/gopath
  mkdir -p "$gopath/src/k8s.io"
  ln -sfn "${src%/}" "$gopath/src/k8s.io/kubernetes"
  tree=$gopath/src/k8s.io/kubernetes
  # Go 1.15 (bullseye's, see install.sh): the Go kubernetes 1.20 was released with, so the vendor tree is
  # built as it is.
  local go115=/usr/lib/go-1.15/bin
  [[ -x $go115/go ]] || die "no Go 1.15 in $go115: run install.sh first"
  export PATH=$go115:$PATH GOROOT=/usr/lib/go-1.15
  export GOPATH=$gopath GO111MODULE=off GOFLAGS= CGO_ENABLED=0 GOCACHE=$E2E_CACHE/go1.15-build

  local openapi=$tree/pkg/generated/openapi/zz_generated.openapi.go
  if [[ ! -s $openapi ]]; then
    log "generating $openapi"
    (cd "$tree" && go build -o "$E2E_CACHE/openapi-gen" ./vendor/k8s.io/kube-openapi/cmd/openapi-gen)
    # Same input set as Makefile.generated_files: every package with a +k8s:openapi-gen tag, staging
    # packages named by their vendor/ path, minus code-generator and sample-apiserver.
    local dirs
    dirs=$(cd "$tree" && find -H . \( -path ./_\* -o -path ./.\* -o -path ./vendor -o -path ./debian \) -prune \
        -o -type f -name '*.go' -print \
      | xargs grep -l '^// *+k8s:' | xargs grep -l '+k8s:openapi-gen=' \
      | sed -e 's|^\./||' -e 's|^staging/src/|vendor/|' -e 's|/[^/]*$||' \
      | grep -v -e '^vendor/k8s.io/code-generator/' -e '^vendor/k8s.io/sample-apiserver/' \
      | LC_ALL=C sort -u | sed 's|^|k8s.io/kubernetes/|' | paste -sd, -)
    (cd "$tree" && "$E2E_CACHE/openapi-gen" --logtostderr -i "$dirs" -p k8s.io/kubernetes/pkg/generated/openapi \
      -O zz_generated.openapi -h vendor/k8s.io/code-generator/hack/boilerplate.go.txt \
      -r /dev/null)
    [[ -s $openapi ]] || die "openapi-gen produced nothing"
  fi

  local vpkg=k8s.io/kubernetes/vendor/k8s.io/component-base/version
  local ldflags="-s -w -X $vpkg.gitVersion=v$K8S_VERSION -X $vpkg.gitMajor=1 -X $vpkg.gitMinor=20"
  ldflags+=" -X $vpkg.gitTreeState=clean -X $vpkg.buildDate=1970-01-01T00:00:00Z"
  local pkgs=() b
  for b in "${BINARIES[@]}"; do pkgs+=("./cmd/$b"); done
  log "building ${BINARIES[*]} (cold: 10+ minutes on 2 cores)"
  (cd "$tree" && go build -p "$(nproc)" -ldflags "$ldflags" -o "$K8S_BIN.tmp/" "${pkgs[@]}")
  for b in "${BINARIES[@]}"; do mv "$K8S_BIN.tmp/$b" "$K8S_BIN/$b"; done
  echo "$BUILD_LEVEL" >"$K8S_BIN/.build-level"
  rmdir "$K8S_BIN.tmp" 2>/dev/null || true
}

have_all=1
for b in "${BINARIES[@]}"; do [[ -x $K8S_BIN/$b ]] || have_all=0; done
[[ $(cat "$K8S_BIN/.build-level" 2>/dev/null) == "$BUILD_LEVEL" ]] || have_all=0
if (( have_all )); then
  log "kubernetes binaries cached in $K8S_BIN"
else
  mkdir -p "$K8S_BIN.tmp"
  build_kubernetes
fi

# Images: no registry here, so both are packed as docker-archive tars and imported into containerd.
# make_image NAME:TAG ROOTFS_DIR ENTRYPOINT_JSON OUT_TAR
make_image() {
  local ref=$1 rootfs=$2 entry=$3 out=$4 work
  work=$(mktemp -d)
  chmod 755 "$rootfs"
  tar --owner=0 --group=0 -C "$rootfs" -cf "$work/layer.tar" .
  local diff_id; diff_id=sha256:$(sha256sum "$work/layer.tar" | cut -d' ' -f1)
  cat >"$work/config.json" <<CFG
{"architecture":"amd64","os":"linux","config":{"Entrypoint":$entry,"Env":["PATH=/bin:/usr/bin:/sbin"]},
 "rootfs":{"type":"layers","diff_ids":["$diff_id"]},"history":[{"created_by":"smb3-csi e2e build.sh"}]}
CFG
  local cfg_id; cfg_id=$(sha256sum "$work/config.json" | cut -d' ' -f1)
  mv "$work/config.json" "$work/$cfg_id.json"
  cat >"$work/manifest.json" <<MAN
[{"Config":"$cfg_id.json","RepoTags":["$ref"],"Layers":["layer.tar"]}]
MAN
  tar -C "$work" -cf "$out.tmp" manifest.json "$cfg_id.json" layer.tar
  mv "$out.tmp" "$out"
  rm -rf "$work"
}

pause_tar=$E2E_CACHE/images/pause.tar
if [[ ! -s $pause_tar ]]; then
  src=$(ls -d "$E2E_CACHE"/src/kubernetes-*/ | head -1)
  rootfs=$(mktemp -d)
  log "building the pause image from build/pause/linux/pause.c"
  gcc -Os -Wall -Werror -static -DVERSION=v3.4-e2e -o "$rootfs/pause" "$src/build/pause/linux/pause.c"
  make_image k8s.gcr.io/pause:3.2 "$rootfs" '["/pause"]' "$pause_tar"
  rm -rf "$rootfs"
fi
busybox_tar=$E2E_CACHE/images/busybox.tar
if [[ ! -s $busybox_tar ]]; then
  rootfs=$(mktemp -d)
  log "building the busybox image from busybox-static"
  mkdir -p "$rootfs/bin" "$rootfs/tmp" "$rootfs/etc"
  cp /bin/busybox "$rootfs/bin/busybox"
  for applet in $("$rootfs/bin/busybox" --list); do
    [[ $applet == busybox ]] || ln -sf busybox "$rootfs/bin/$applet"
  done
  chmod 1777 "$rootfs/tmp"
  echo 'root:x:0:0:root:/root:/bin/sh' >"$rootfs/etc/passwd"
  echo 'root:x:0:' >"$rootfs/etc/group"
  make_image e2e.local/busybox:1 "$rootfs" '["/bin/sh"]' "$busybox_tar"
  rm -rf "$rootfs"
fi
log "build done"
