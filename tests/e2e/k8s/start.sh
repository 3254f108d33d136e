#!/usr/bin/env bash
# Starts the single-node cluster on loopback: etcd, kube-apiserver (RBAC + Node authorization),
# kube-controller-manager, containerd and the kubelet. Re-running it leaves running daemons alone.
# State: $E2E_STATE (default /tmp/smb3-csi-e2e). Stop with stop.sh, wipe with teardown.sh.
source "$(dirname "$0")/lib.sh"

for b in kube-apiserver kube-controller-manager kubelet kubectl; do
  [[ -x $K8S_BIN/$b ]] || die "$K8S_BIN/$b missing: run build.sh"
done
PKI=$E2E_STATE/pki
mkdir -p "$PKI" "$E2E_STATE/run" "$E2E_STATE/logs"

# --- certificates, service-account keys, tokens and kubeconfigs (made once per state dir) ---
if [[ ! -f $PKI/apiserver.crt ]]; then
  log "creating the cluster CA, apiserver certificate and service-account keys"
  openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=smb3-csi-e2e-ca" \
    -keyout "$PKI/ca.key" -out "$PKI/ca.crt" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver" \
    -keyout "$PKI/apiserver.key" -out "$PKI/apiserver.csr" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc\n' \
    >"$PKI/apiserver.ext"
  openssl x509 -req -in "$PKI/apiserver.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial -days 30 \
    -extfile "$PKI/apiserver.ext" -out "$PKI/apiserver.crt" 2>/dev/null
  openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null
  openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
  chmod 600 "$PKI"/*.key
fi
if [[ ! -f $PKI/tokens.csv ]]; then
  tok() { head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n'; }
  {
    echo "$(tok),admin,admin,system:masters"
    echo "$(tok),system:node:$NODE_NAME,kubelet,system:nodes"
    echo "$(tok),system:kube-controller-manager,kcm"
  } >"$PKI/tokens.csv.tmp"
  chmod 600 "$PKI/tokens.csv.tmp"
  mv "$PKI/tokens.csv.tmp" "$PKI/tokens.csv"
fi
token_of() { awk -F, -v u="$1" '$2 == u {print $1}' "$PKI/tokens.csv"; }
# A subshell body: the umask must not leak into the daemons started below (containerd would create
# 0700 snapshot roots, and containers running as a non-root user could not even exec /bin/sh).
write_kubeconfig() ( # FILE USER TOKEN
  umask 077
  cat >"$1" <<KC
apiVersion: v1
kind: Config
clusters:
- name: e2e
  cluster:
    server: https://127.0.0.1:$APISERVER_PORT
    certificate-authority: $PKI/ca.crt
users:
- name: $2
  user:
    token: $3
contexts:
- name: e2e
  context: {cluster: e2e, user: $2}
current-context: e2e
KC
)
write_kubeconfig "$KUBECONFIG_ADMIN" admin "$(token_of admin)"
write_kubeconfig "$PKI/kubelet.kubeconfig" "system:node:$NODE_NAME" "$(token_of "system:node:$NODE_NAME")"
write_kubeconfig "$PKI/kcm.kubeconfig" system:kube-controller-manager "$(token_of system:kube-controller-manager)"

# --- etcd ---
start_daemon etcd etcd --name e2e --data-dir "$E2E_STATE/etcd" \
  --listen-client-urls "http://127.0.0.1:$ETCD_CLIENT_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_CLIENT_PORT" \
  --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-cluster "e2e=http://127.0.0.1:$ETCD_PEER_PORT" --listen-metrics-urls "http://127.0.0.1:$((ETCD_CLIENT_PORT + 2))"
wait_for etcd 60 curl -fsS "http://127.0.0.1:$ETCD_CLIENT_PORT/health"

# --- kube-apiserver ---
start_daemon kube-apiserver "$K8S_BIN/kube-apiserver" \
  --etcd-servers="http://127.0.0.1:$ETCD_CLIENT_PORT" \
  --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$APISERVER_PORT" --insecure-port=0 \
  --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" --client-ca-file="$PKI/ca.crt" \
  --token-auth-file="$PKI/tokens.csv" --authorization-mode=Node,RBAC --anonymous-auth=false \
  --enable-admission-plugins=NodeRestriction --allow-privileged=true \
  --service-account-key-file="$PKI/sa.pub" --service-account-signing-key-file="$PKI/sa.key" \
  --service-account-issuer=https://kubernetes.default.svc.cluster.local \
  --service-cluster-ip-range=10.0.0.0/24 --endpoint-reconciler-type=none \
  --kubelet-preferred-address-types=InternalIP --cert-dir="$PKI/apiserver-generated" \
  --profiling=false --v=1
wait_for kube-apiserver 120 "$KUBECTL" --kubeconfig "$KUBECONFIG_ADMIN" get --raw /readyz

# --- kube-controller-manager (PV binder, SA tokens, GC, namespaces, ...) ---
start_daemon kube-controller-manager "$K8S_BIN/kube-controller-manager" \
  --kubeconfig="$PKI/kcm.kubeconfig" --authentication-kubeconfig="$PKI/kcm.kubeconfig" \
  --authorization-kubeconfig="$PKI/kcm.kubeconfig" --leader-elect=false --bind-address=127.0.0.1 \
  --port=0 --secure-port=0 --use-service-account-credentials=true \
  --service-account-private-key-file="$PKI/sa.key" --root-ca-file="$PKI/ca.crt" \
  --controllers='*,-nodeipam,-service,-route,-cloud-node-lifecycle,-bootstrapsigner,-tokencleaner' \
  --pvclaimbinder-sync-period=2s --v=1

# --- containerd, with its own root, state and socket ---
CTRD=$E2E_STATE/containerd
mkdir -p "$CTRD" "$E2E_STATE/cni/net.d"
cat >"$E2E_STATE/cni/net.d/10-loopback.conf" <<'CNI'
{"cniVersion": "0.4.0", "name": "e2e-lo", "type": "loopback"}
CNI
cat >"$CTRD/config.toml" <<TOML
version = 2
root = "$CTRD/root"
state = "$CTRD/state"
[grpc]
  address = "$CTRD/containerd.sock"
[ttrpc]
  address = "$CTRD/containerd.sock.ttrpc"
[debug]
  address = "$CTRD/debug.sock"
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "k8s.gcr.io/pause:3.2"
  # No CAP_SYS_RESOURCE here: without this, setting a pod's oom_score_adj fails the sandbox.
  restrict_oom_score_adj = true
  disable_apparmor = true
  stream_server_address = "127.0.0.1"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$E2E_STATE/cni/net.d"
TOML
start_daemon containerd containerd --config "$CTRD/config.toml"
ctr_() { ctr --address "$CTRD/containerd.sock" -n k8s.io "$@"; }
wait_for containerd 60 ctr_ version
for img in pause busybox; do
  ref=$(tar -xOf "$E2E_CACHE/images/$img.tar" manifest.json | jq -r '.[0].RepoTags[0]')
  if ! ctr_ images ls -q | grep -qxF "$ref"; then
    log "importing $ref"
    ctr_ images import --no-unpack=false "$E2E_CACHE/images/$img.tar" >/dev/null
  fi
done

# --- kubelet ---
mkdir -p "$KUBELET_DIR"
start_daemon kubelet "$K8S_BIN/kubelet" \
  --kubeconfig="$PKI/kubelet.kubeconfig" --root-dir="$KUBELET_DIR" --cert-dir="$KUBELET_DIR/pki" \
  --hostname-override="$NODE_NAME" --node-ip=127.0.0.1 \
  --container-runtime=remote --container-runtime-endpoint="unix://$CTRD/containerd.sock" \
  --image-service-endpoint="unix://$CTRD/containerd.sock" --runtime-request-timeout=5m \
  --cgroup-driver=cgroupfs --cgroups-per-qos=false --enforce-node-allocatable= --fail-swap-on=false \
  --address=127.0.0.1 --port=11250 --read-only-port=0 --healthz-bind-address=127.0.0.1 --healthz-port=11248 \
  --volume-plugin-dir="$KUBELET_DIR/volume-plugins" --pod-infra-container-image=k8s.gcr.io/pause:3.2 \
  --image-gc-high-threshold=100 --image-gc-low-threshold=99 \
  --eviction-hard='memory.available<50Mi,nodefs.available<1%,imagefs.available<1%' \
  --resolv-conf=/etc/resolv.conf --v=2
wait_for "node $NODE_NAME Ready" 120 bash -c \
  "'$KUBECTL' --kubeconfig '$KUBECONFIG_ADMIN' get node '$NODE_NAME' -o jsonpath='{.status.conditions[?(@.type==\"Ready\")].status}' | grep -qx True"
log "cluster up: export KUBECONFIG=$KUBECONFIG_ADMIN; kubectl at $KUBECTL"
