#!/usr/bin/env bash
# The end-to-end suite on a real single-node Kubernetes 1.20 (real API server, kubelet, pods):
#   tests/e2e/k8s/run.sh
# installs what is missing, builds or reuses the cluster binaries (~/.cache/smb3-csi-e2e), starts
# the cluster on loopback, runs the driver as host processes (controller, node, `smb3-csi registrar`)
# with the chart's CSIDriver/RBAC/StorageClass applied, a private Samba and a test provisioner,
# then runs the scenarios. One PASS/FAIL line per test and a final "N passed, N failed"; the exit
# status is non-zero when anything failed. Everything is torn down at the end (E2E_KEEP=1 keeps
# the cluster up for debugging; tests/e2e/k8s/teardown.sh removes it later).
#
# E2E_FAKE_NODE=1 replaces the node plugin with a stand-in that answers only NodeGetInfo: enough to
# check plugin registration when the Node service is not in the build (the volume scenarios then fail).
source "$(dirname "$0")/lib.sh"
START=$SECONDS
NS=smb3-csi-system
DRIVER=smb3.csi.dev
PLUGIN_DIR=$KUBELET_DIR/plugins/$DRIVER
NODE_SOCKET=$PLUGIN_DIR/csi.sock
CONTROLLER_SOCKET=$E2E_STATE/csi/controller.sock
E2E_LOGS=${E2E_LOGS:-$E2E_STATE-logs}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$REPO_ROOT/target}

cleanup() {
  local rc=$?
  if [[ ${E2E_KEEP:-0} == 1 ]]; then
    log "E2E_KEEP=1: cluster left running; KUBECONFIG=$KUBECONFIG_ADMIN; tests/e2e/k8s/teardown.sh removes it"
  else
    # The state dir goes with the teardown; the logs stay for a failed run's post-mortem.
    if [[ -d $E2E_STATE/logs ]]; then
      rm -rf "$E2E_LOGS" && cp -r "$E2E_STATE/logs" "$E2E_LOGS" && log "logs kept in $E2E_LOGS"
    fi
    bash "$E2E_DIR/teardown.sh" || true
  fi
  log "total $((SECONDS - START))s"
  exit "$rc"
}

# --- prerequisites, cluster, driver binaries ---
bash "$E2E_DIR/install.sh"
bash "$E2E_DIR/build.sh"
log "building smb3-csi and the e2e harness"
# The same packages, targets and features as the README's test command (scripts/test.sh), so after it
# nothing is compiled again: another feature set would rebuild the driver and much of its dependency tree
# (about 6 minutes on 2 cores).
BUILD_ARGS=(--workspace --all-targets --features smb3-csi/demo)
(cd "$REPO_ROOT" && cargo build --quiet "${BUILD_ARGS[@]}")
SMB3_CSI=$CARGO_TARGET_DIR/debug/smb3-csi
SECRET_SCAN=$CARGO_TARGET_DIR/debug/secret-scan
HARNESS=$(cd "$REPO_ROOT" && cargo test --quiet "${BUILD_ARGS[@]}" --no-run --message-format=json 2>/dev/null \
  | jq -r 'select(.reason == "compiler-artifact" and .target.name == "e2e" and .executable != null) | .executable' | tail -1)
[[ -x $HARNESS ]] || die "could not build the e2e harness (cargo test ${BUILD_ARGS[*]} --no-run)"

trap cleanup EXIT
# A previous run that was killed may have left a cluster behind: start from a clean state.
if [[ -d $E2E_STATE ]]; then bash "$E2E_DIR/teardown.sh"; fi
bash "$E2E_DIR/start.sh"
export KUBECONFIG=$KUBECONFIG_ADMIN KUBECTL E2E_STATE E2E_DRIVER=$DRIVER E2E_NODE_NAME=$NODE_NAME
export E2E_CONTROLLER_SOCKET=$CONTROLLER_SOCKET E2E_FAKE_NODE_SOCKET=$NODE_SOCKET

# --- Samba + test provisioner ---
rm -f "$E2E_STATE/run/harness.stop" "$E2E_STATE/run/fake-node.stop"
# The harness's test kit registers every password its Samba gets (the first, the rotated one) here,
# for the secret scan at the end (crates/smb3-testkit/src/run_log.rs).
export SMB3_TESTKIT_RUN_LOG=$E2E_STATE/secret-scan
start_daemon smb3-csi-provisioner "$HARNESS" --ignored --exact harness --nocapture
wait_for "the private Samba" 90 test -s "$E2E_STATE/samba.env" || die "harness did not start: $(tail -20 "$E2E_STATE/logs/smb3-csi-provisioner.log")"
# shellcheck disable=SC1091
source "$E2E_STATE/samba.env"
SOURCE="//$SMB_HOST:$SMB_PORT/$SMB_SHARE"
AUTH=$E2E_STATE/smb.auth
(umask 077; printf 'username = %s\npassword = %s\ndomain = WORKGROUP\n' "$SMB_USER" "$SMB_PASSWORD" >"$AUTH")
smbc() { smbclient "//$SMB_HOST/$SMB_SHARE" -p "$SMB_PORT" -A "$AUTH" --client-protection=encrypt -c "$1" 2>&1; }

# --- the Kerberos scenario's Active Directory DC (Samba with its KDC, from the test kit, on 127.0.0.20-59) ---
# Its krb5.conf (realm, KDC address) is the controller's and node plugin's KRB5_CONFIG, as the chart's
# kerberos.krb5Conf would be; its name dc1.smb3test.test does not resolve, so volumes give ip=.
rm -f "$E2E_STATE/run/addc.stop"
start_daemon smb3-csi-addc "$HARNESS" --ignored --exact ad_dc_harness --nocapture
wait_for "the private AD DC" 180 test -s "$E2E_STATE/addc.env" \
  || die "AD DC harness did not start: $(tail -20 "$E2E_STATE/logs/smb3-csi-addc.log")"
# shellcheck disable=SC1091
source "$E2E_STATE/addc.env"

# --- the chart's objects, rendered by helm-render ---
HELM_RENDER=${HELM_RENDER:-$REPO_ROOT/../shared/tools/helm-render/helm-render}
[[ -x $HELM_RENDER ]] || HELM_RENDER=/work/shared/tools/helm-render/helm-render
render() {
  # The chart declares kubeVersion >=1.28; the objects applied here are all valid on 1.20.
  "$HELM_RENDER" template smb3-csi "$REPO_ROOT/charts/smb3-csi" -n "$NS" \
    --set feature.enableInlineVolume=true,storageClass.create=true,storageClass.onDelete=delete \
    --set-string storageClass.source="$SOURCE" "$@"
}
kc create namespace "$NS" --dry-run=client -o yaml | kc apply -f - >/dev/null
render -s templates/csi-driver.yaml -s templates/serviceaccounts.yaml -s templates/rbac.yaml \
  -s templates/storageclass.yaml --set "node.credentialsRotation.secretNamespaces={$NS}" >"$E2E_STATE/chart.yaml"
kc apply -f "$E2E_STATE/chart.yaml" >/dev/null
# Same class with onDelete=archive, for scenario 1.
render -s templates/storageclass.yaml --set storageClass.name=smb3-archive,storageClass.onDelete=archive \
  | kc apply -f - >/dev/null
kc -n "$NS" create secret generic smb-creds --from-literal=username="$SMB_USER" \
  --from-literal=password="$SMB_PASSWORD" --dry-run=client -o yaml | kc apply -f - >/dev/null

# --- the node plugin's kubeconfig: its ServiceAccount's token (legacy token Secret in 1.20) ---
wait_for "node ServiceAccount token" 60 bash -c "'$KUBECTL' --kubeconfig '$KUBECONFIG' -n $NS get sa smb3-csi-node-sa -o jsonpath='{.secrets[0].name}' | grep -q ."
sa_secret=$(kc -n "$NS" get sa smb3-csi-node-sa -o jsonpath='{.secrets[0].name}')
sa_token=$(kc -n "$NS" get secret "$sa_secret" -o jsonpath='{.data.token}' | base64 -d)
NODE_KUBECONFIG=$E2E_STATE/node.kubeconfig
(umask 077; sed -e "s|^- name: admin|- name: smb3-csi-node-sa|" -e "s|user: admin}|user: smb3-csi-node-sa}|" \
  -e "s|token: .*|token: $sa_token|" "$KUBECONFIG_ADMIN" >"$NODE_KUBECONFIG")

# --- the driver, as host processes ---
# The node plugin as its manager would start it (test_node_plugin_restart starts it again the same way).
start_node_plugin() {
  start_daemon smb3-csi-node env KRB5_CONFIG="$DC_KRB5_CONF" "$SMB3_CSI" node --endpoint "unix://$NODE_SOCKET" --node-id "$NODE_NAME" --kubelet-dir "$KUBELET_DIR" \
    --driver-name "$DRIVER" --kubeconfig "$NODE_KUBECONFIG" --log-level info
}
mkdir -p "$(dirname "$CONTROLLER_SOCKET")" "$PLUGIN_DIR"
start_daemon smb3-csi-controller env KRB5_CONFIG="$DC_KRB5_CONF" "$SMB3_CSI" controller --endpoint "unix://$CONTROLLER_SOCKET" \
  --driver-name "$DRIVER" --log-level info
if [[ ${E2E_FAKE_NODE:-0} == 1 ]]; then
  start_daemon smb3-csi-node "$HARNESS" --ignored --exact fake_node_plugin --nocapture
else
  start_node_plugin
fi
start_daemon smb3-csi-registrar "$SMB3_CSI" registrar --csi-address="$NODE_SOCKET" \
  --kubelet-registration-path="$NODE_SOCKET" --registration-dir="$KUBELET_DIR/plugins_registry" \
  --log-level=info --log-format=text

# --- test helpers ---
PASSED=0 FAILED=0 RESULTS=()
run_test() { # NAME FUNCTION; E2E_ONLY=name1,name2 runs a subset
  local name=$1 t0=$SECONDS
  if [[ -n ${E2E_ONLY:-} && ,$E2E_ONLY, != *,$name,* ]]; then return 0; fi
  log "--- $name"
  local rc=0
  # Not in an `if`: bash ignores set -e inside a condition.
  set +e
  ( set -e; "$2" ) >"$E2E_STATE/logs/test-$name.log" 2>&1
  rc=$?
  set -e
  if (( rc == 0 )); then
    PASSED=$((PASSED + 1)); RESULTS+=("PASS $name ($((SECONDS - t0))s)")
    echo "PASS $name ($((SECONDS - t0))s)"
  else
    FAILED=$((FAILED + 1)); RESULTS+=("FAIL $name ($((SECONDS - t0))s)")
    echo "FAIL $name ($((SECONDS - t0))s)"
    sed 's/^/    /' "$E2E_STATE/logs/test-$name.log" | tail -25
  fi
}
fail() { echo "FAILED: $*"; exit 1; }
pod_phase() { kc -n "${2:-default}" get pod "$1" -o jsonpath='{.status.phase}' 2>/dev/null; }
# wait_pod NAME [NS] [TIMEOUT]: until the pod has finished; prints its phase, and its termination message.
wait_pod() {
  local pod=$1 ns=${2:-default} timeout=${3:-90} t0=$SECONDS phase
  while :; do
    phase=$(pod_phase "$pod" "$ns")
    [[ $phase == Succeeded || $phase == Failed ]] && break
    if (( SECONDS - t0 > timeout )); then
      echo "pod $ns/$pod still $phase after ${timeout}s; events:"
      kc -n "$ns" get events --field-selector "involvedObject.name=$pod" -o custom-columns=REASON:.reason,MESSAGE:.message | tail -8
      return 1
    fi
    sleep 1
  done
  echo "pod $ns/$pod: $phase: $(kc -n "$ns" get pod "$pod" -o jsonpath='{.status.containerStatuses[0].state.terminated.message}')"
  [[ $phase == Succeeded ]]
}
# pod_yaml NAME SCRIPT VOLUME_YAML [EXTRA_POD_SPEC] [MOUNT_EXTRA]: a busybox pod on our node running SCRIPT
# with the volume at /data. The script's output (stdout and stderr) is written to /dev/termination-log,
# so it is the termination message whether the script succeeds or fails (no kubectl logs: the kubelet
# has no non-loopback address, so the API server cannot reach it).
pod_yaml() {
  cat <<POD
apiVersion: v1
kind: Pod
metadata: {name: $1}
spec:
  nodeName: $NODE_NAME
  hostNetwork: true
  automountServiceAccountToken: false
  restartPolicy: Never
  terminationGracePeriodSeconds: 1
${4:-}
  containers:
  - name: c
    image: e2e.local/busybox:1
    imagePullPolicy: Never
    terminationMessagePolicy: FallbackToLogsOnError
    command: ["sh", "-c", $(printf 'out=$( { %s
} 2>&1 ); rc=$?; printf "%%s\n" "$out" | tee /dev/termination-log; exit $rc' "$2" | jq -Rs .)]
    volumeMounts: [{name: data, mountPath: /data${5:-}}]
  volumes:
  - name: data
$3
POD
}
pvc_yaml() { # NAME CLASS MODE
  printf 'apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: %s}\nspec:\n  storageClassName: %s\n  accessModes: [%s]\n  resources: {requests: {storage: 1Gi}}\n' "$1" "$2" "$3"
}
wait_bound() { wait_for "claim $1 bound" 60 bash -c "[[ \$('$KUBECTL' --kubeconfig '$KUBECONFIG' get pvc $1 -o jsonpath='{.status.phase}') == Bound ]]" \
  || fail "claim $1 not bound: $(kc get pvc "$1" -o jsonpath='{.metadata.annotations}')"; }
delete_pod() { kc delete pod "$1" --wait=false >/dev/null 2>&1 || true; wait_for "pod $1 gone" 90 bash -c "! '$KUBECTL' --kubeconfig '$KUBECONFIG' get pod $1"; }
mounts_of() { grep -F "$1" /proc/self/mounts || true; }

# --- tests ---
test_registration() {
  wait_for "CSINode lists $DRIVER" 60 bash -c \
    "'$KUBECTL' --kubeconfig '$KUBECONFIG' get csinode $NODE_NAME -o jsonpath='{.spec.drivers[*].name}' | grep -qw '$DRIVER'" \
    || fail "driver not in CSINode: $(kc get csinode -o yaml 2>&1 | tail -5); registrar: $(tail -5 "$E2E_STATE/logs/smb3-csi-registrar.log")"
  echo "CSINode $NODE_NAME: $(kc get csinode "$NODE_NAME" -o jsonpath='{.spec.drivers[*].name} nodeID={.spec.drivers[0].nodeID}')"
  [[ -S $KUBELET_DIR/plugins_registry/$DRIVER-reg.sock ]] || fail "no registration socket"
}

test_dynamic_pvc() {
  for class in smb3 smb3-archive; do
    local claim=dyn-$class pod=dyn-writer-$class
    pvc_yaml "$claim" "$class" ReadWriteOnce | kc apply -f -
    wait_bound "$claim"
    local pv; pv=$(kc get pvc "$claim" -o jsonpath='{.spec.volumeName}')
    pod_yaml "$pod" 'echo hello-from-pod > /data/hello.txt && cat /data/hello.txt' \
      "    persistentVolumeClaim: {claimName: $claim}" | kc apply -f -
    wait_pod "$pod" || fail "writer pod failed"
    smbc "get $pv/hello.txt $E2E_STATE/hello.txt" >/dev/null || fail "hello.txt not on the share under $pv/: $(smbc "ls $pv/*")"
    [[ $(cat "$E2E_STATE/hello.txt") == hello-from-pod ]] || fail "content on the share: $(cat "$E2E_STATE/hello.txt")"
    echo "$class: $pv/hello.txt on the share"
    local uid; uid=$(kc get pod "$pod" -o jsonpath='{.metadata.uid}')
    delete_pod "$pod"
    wait_for "unpublish and unstage of $pv" 60 bash -c "! grep -qF '$pv' /proc/self/mounts" || fail "mounts left: $(mounts_of "$pv")"
    [[ -z $(mounts_of "$uid") ]] || fail "pod mounts left: $(mounts_of "$uid")"
    kc delete pvc "$claim" --wait=false
    wait_for "PV $pv deleted" 60 bash -c "! '$KUBECTL' --kubeconfig '$KUBECONFIG' get pv $pv" || fail "PV $pv not deleted"
    local listing; listing=$(smbc "ls *")
    if [[ $class == smb3 ]]; then
      ! grep -qw "$pv" <<<"$listing" || fail "onDelete=delete left $pv on the share"
    else
      grep -qw "archived-$pv" <<<"$listing" || fail "onDelete=archive: no archived-$pv on the share: $listing"
      ! grep -qE "^ +$pv " <<<"$listing" || fail "onDelete=archive left $pv in place"
    fi
    echo "$class: onDelete honoured"
  done
}

test_rwx_two_pods() {
  pvc_yaml rwx smb3 ReadWriteMany | kc apply -f -
  wait_bound rwx
  local wait_for_peer='for i in $(seq 1 60); do [ -f /data/$PEER.txt ] && break; sleep 1; done; cat /data/$PEER.txt'
  for me in a b; do
    local peer=b; [[ $me == b ]] && peer=a
    pod_yaml "rwx-$me" "PEER=$peer; echo written-by-$me > /data/$me.txt && $wait_for_peer" \
      "    persistentVolumeClaim: {claimName: rwx}" | kc apply -f -
  done
  wait_pod rwx-a | tee "$E2E_STATE/rwx-a" && wait_pod rwx-b | tee "$E2E_STATE/rwx-b" || fail "an RWX pod failed"
  grep -q written-by-b "$E2E_STATE/rwx-a" || fail "pod a did not read b's write"
  grep -q written-by-a "$E2E_STATE/rwx-b" || fail "pod b did not read a's write"
  delete_pod rwx-a; delete_pod rwx-b
  kc delete pvc rwx --wait=false
}

test_inline_ephemeral_secret() {
  # Like a static PV, an inline volume mounts an existing directory of the share.
  smbc "mkdir inline-e2e" >/dev/null || true
  kc create secret generic inline-creds --from-literal=username="$SMB_USER" --from-literal=password="$SMB_PASSWORD" \
    --dry-run=client -o yaml | kc apply -f -
  local vol="    csi:
      driver: $DRIVER
      volumeAttributes: {source: \"$SOURCE\", subDir: inline-e2e, secretName: inline-creds}"
  pod_yaml inline 'echo inline-ok > /data/inline.txt && cat /data/inline.txt' "$vol" | kc apply -f -
  wait_pod inline || fail "inline pod failed"
  smbc "get inline-e2e/inline.txt $E2E_STATE/inline.txt" >/dev/null || fail "inline.txt not on the share"
  [[ $(cat "$E2E_STATE/inline.txt") == inline-ok ]] || fail "inline content differs"
  delete_pod inline
  # Without the chart's binding the node plugin's ServiceAccount may not read the Secret.
  local binding; binding=$(kc get clusterrolebinding -o name | grep node-secret-binding)
  kc get "$binding" -o yaml >"$E2E_STATE/binding.yaml"
  kc delete "$binding"
  pod_yaml inline-denied 'echo should-not-run' "$vol" | kc apply -f -
  local denied=0
  for _ in $(seq 1 60); do
    if kc get events --field-selector involvedObject.name=inline-denied -o jsonpath='{.items[*].message}' \
      | grep -qiE 'forbidden|permission|denied'; then denied=1; break; fi
    sleep 1
  done
  kc get events --field-selector involvedObject.name=inline-denied -o jsonpath='{.items[*].message}' | tail -c 600; echo
  [[ $(pod_phase inline-denied) != Succeeded ]] || fail "pod ran without RBAC"
  grep -v -e resourceVersion -e uid: -e creationTimestamp "$E2E_STATE/binding.yaml" | kc apply -f -
  delete_pod inline-denied
  (( denied )) || fail "no mount failure naming the denied Secret read"
}

test_fsgroup_readonly() {
  pvc_yaml fsg smb3 ReadWriteMany | kc apply -f -
  wait_bound fsg
  # runAsUser 1000 is not the mount's owner: it can write only as a member of the fsGroup. The kubelet
  # (1.20: no VOLUME_MOUNT_GROUP) chowns the volume root to the fsGroup, which becomes the mount's group.
  pod_yaml fsg-writer 'id; touch /data/f && mkdir /data/d && echo "groups: $(stat -c %g /data/f /data/d | tr "\n" " ")"' \
    "    persistentVolumeClaim: {claimName: fsg}" "  securityContext: {fsGroup: 4321, runAsUser: 1000}" | kc apply -f -
  wait_pod fsg-writer | tee "$E2E_STATE/fsg" || fail "fsGroup pod failed"
  grep -qE '^groups: 4321 4321 ?$' "$E2E_STATE/fsg" || fail "files do not carry group 4321"
  pod_yaml fsg-ro 'if echo x > /data/ro.txt; then echo WRITE-ALLOWED; exit 1; fi; ls /data/f && echo read-only-ok' \
    "    persistentVolumeClaim: {claimName: fsg, readOnly: true}" "" ", readOnly: true" | kc apply -f -
  wait_pod fsg-ro || fail "read-only volume accepted a write (or could not be read)"
  delete_pod fsg-writer; delete_pod fsg-ro
  kc delete pvc fsg --wait=false
}

test_static_pv() {
  smbc "mkdir static-e2e" >/dev/null || true
  kc apply -f - <<PV
apiVersion: v1
kind: PersistentVolume
metadata: {name: static-e2e}
spec:
  capacity: {storage: 1Gi}
  accessModes: [ReadWriteMany]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: ""
  claimRef: {namespace: default, name: static-e2e}
  csi:
    driver: $DRIVER
    volumeHandle: static-e2e-handle
    volumeAttributes: {source: "$SOURCE", subDir: static-e2e}
    nodeStageSecretRef: {name: smb-creds, namespace: $NS}
PV
  printf 'apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: static-e2e}\nspec:\n  storageClassName: ""\n  volumeName: static-e2e\n  accessModes: [ReadWriteMany]\n  resources: {requests: {storage: 1Gi}}\n' | kc apply -f -
  wait_bound static-e2e
  pod_yaml static-writer 'echo static-ok > /data/static.txt && cat /data/static.txt' \
    "    persistentVolumeClaim: {claimName: static-e2e}" | kc apply -f -
  wait_pod static-writer || fail "static PV pod failed"
  smbc "get static-e2e/static.txt $E2E_STATE/static.txt" >/dev/null || fail "static.txt not in static-e2e/ on the share"
  [[ $(cat "$E2E_STATE/static.txt") == static-ok ]] || fail "static content differs"
  delete_pod static-writer
  kc delete pvc static-e2e; kc delete pv static-e2e
}

# --- faults: the harness restarts Samba and changes the password on request (tests/e2e/control.rs) ---
# samba_control REQUEST: "restart SECONDS" or "password NEW"; waits for the harness's reply, prints its duration (ms).
samba_control() {
  local request=$E2E_STATE/run/control.request reply=$E2E_STATE/run/control.reply answer
  rm -f "$reply"
  (umask 077; printf '%s\n' "$1" >"$request.tmp") && mv "$request.tmp" "$request"
  wait_for "the harness's reply to ${1%% *}" 120 test -s "$reply" || fail "no reply from the harness to ${1%% *}"
  answer=$(cat "$reply"); rm -f "$reply"
  [[ $answer == ok* ]] || fail "harness: ${1%% *}: $answer"
  echo "${answer#ok }"
}
# A pod appending numbered lines ("line N t=UPTIME", /proc/uptime in 1/100 s) to /data/log.txt every 0.1 s
# until /data/stop appears, each written and fsync'd through its own descriptor (dd oflag=append
# conv=fsync); any failed open, write or fsync fails the pod.
WRITER='i=0; : > /data/log.txt
while [ ! -f /data/stop ] && [ $i -lt 3000 ]; do
  i=$((i + 1)); read up _ < /proc/uptime
  out=$(echo "line $i t=$up" | dd of=/data/log.txt oflag=append conv=notrunc,fsync 2>&1) \
    || { echo "writing line $i failed: $out"; exit 1; }
  sleep 0.1
done
echo "wrote $i lines"'
# writer_lines PV: the number of lines of the writer's file on the share (smbclient, not through our client).
writer_lines() { smbc "get $1/log.txt $E2E_STATE/writer.txt" >/dev/null && wc -l <"$E2E_STATE/writer.txt"; }
# check_writer POD PV NAME: the pod succeeded without a restart, the share has lines 1..N each once in order
# (N as the pod reported), and the longest gap between consecutive timestamps is the pause the pod saw.
check_writer() {
  local pod=$1 pv=$2 name=$3 wrote restarts
  wait_pod "$pod" default 120 | tee "$E2E_STATE/$pod.out" || fail "the writer pod failed"
  restarts=$(kc get pod "$pod" -o jsonpath='{.status.containerStatuses[0].restartCount}')
  [[ $restarts == 0 ]] || fail "the writer restarted $restarts times"
  wrote=$(grep -oE 'wrote [0-9]+ lines' "$E2E_STATE/$pod.out" | grep -oE '[0-9]+')
  [[ -n $wrote ]] || fail "the pod did not say how many lines it wrote"
  smbc "get $pv/log.txt $E2E_STATE/$pod.txt" >/dev/null || fail "log.txt not on the share under $pv/"
  awk -v n="$wrote" '
    { if ($1 != "line" || $2 != NR || $3 !~ /^t=[0-9.]+$/) { printf "line %d of the file is %s\n", NR, $0; bad = 1; exit 1 } }
    END { if (!bad && NR != n) { printf "%d lines on the share, the pod wrote %d\n", NR, n; exit 1 } }' \
    "$E2E_STATE/$pod.txt" || fail "the file on the share is not lines 1..$wrote once each, in order"
  local pause
  pause=$(awk '{ t = substr($3, 3) + 0; if (NR > 1 && t - prev > max) max = t - prev; prev = t } END { printf "%.2f", max }' \
    "$E2E_STATE/$pod.txt")
  echo "PAUSE $name: $wrote lines intact on the share, restartCount 0, longest gap between lines ${pause}s"
  echo "$name: longest gap between the pod's lines ${pause}s ($wrote lines, no error, no restart)" >>"$E2E_STATE/logs/pauses"
}
# start_writer CLAIM POD: a claim and the writer pod on it, once it has written a few lines; sets WRITER_PV.
writer_at_least() { [[ $(writer_lines "$1" 2>/dev/null || echo 0) -ge $2 ]]; }
start_writer() {
  pvc_yaml "$1" smb3 ReadWriteOnce | kc apply -f -
  wait_bound "$1"
  WRITER_PV=$(kc get pvc "$1" -o jsonpath='{.spec.volumeName}')
  pod_yaml "$2" "$WRITER" "    persistentVolumeClaim: {claimName: $1}" | kc apply -f -
  wait_for "$2 writing" 90 writer_at_least "$WRITER_PV" 10 \
    || fail "$2 did not start writing: $(pod_phase "$2"): $(kc get pod "$2" -o jsonpath='{.status.containerStatuses[0].state.terminated.message}')"
}
stop_writer() { # PV: creates the stop file on the share, which ends the writer's loop
  : >"$E2E_STATE/empty"
  smbc "put $E2E_STATE/empty $1/stop" >/dev/null || fail "cannot create $1/stop on the share"
}
# node_log_since BYTES: the node plugin's log after its first BYTES, without colour codes.
node_log_since() { tail -c +"$(($1 + 1))" "$E2E_STATE/logs/smb3-csi-node.log" | sed 's/\x1b\[[0-9;]*m//g'; }
log_size() { stat -c %s "$E2E_STATE/logs/smb3-csi-node.log"; }

test_samba_restart() {
  start_writer restart-pvc restart-writer
  local pv=$WRITER_PV from
  from=$(log_size)
  local took; took=$(samba_control "restart 4")
  echo "Samba stopped, 4 s down, started again on port $SMB_PORT (${took} ms)"
  sleep 3
  stop_writer "$pv"
  check_writer restart-writer "$pv" samba-restart
  node_log_since "$from" | grep -E "SMB connection (lost|re-established)" | tail -3
  node_log_since "$from" | grep -q "SMB connection re-established" || fail "the node log shows no reconnect"
  delete_pod restart-writer
  kc delete pvc restart-pvc --wait=false
}

test_password_rotation() {
  start_writer rotate-pvc rotate-writer
  local pv=$WRITER_PV from new
  from=$(log_size)
  new="Rot-$(head -c 9 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')9"
  samba_control "password $new" >/dev/null
  # The Secret named by the PV's nodeStageSecretRef (the StorageClass's), as an operator would rotate it.
  local ref; ref=$(kc get pv "$pv" -o jsonpath='{.spec.csi.nodeStageSecretRef.namespace}/{.spec.csi.nodeStageSecretRef.name}')
  [[ $ref == "$NS/smb-creds" ]] || fail "unexpected nodeStageSecretRef $ref"
  kc -n "$NS" create secret generic smb-creds --from-literal=username="$SMB_USER" --from-literal=password="$new" \
    --dry-run=client -o yaml | kc apply -f -
  SMB_PASSWORD=$new
  (umask 077; printf 'username = %s\npassword = %s\ndomain = WORKGROUP\n' "$SMB_USER" "$SMB_PASSWORD" >"$AUTH")
  echo "password changed on Samba and in Secret $ref; the session stays up until the server restarts"
  local took; took=$(samba_control "restart 2")
  echo "Samba restarted (${took} ms): the node must log on again with the rotated password"
  sleep 3
  stop_writer "$pv"
  check_writer rotate-writer "$pv" password-rotation
  node_log_since "$from" | grep -E "re-read the volume's Secret|credentials rejected|re-established" | tail -4
  node_log_since "$from" | grep "re-read the volume's Secret" | grep -q "changed=true" \
    || fail "the node log does not show the Secret re-read with a changed password"
  node_log_since "$from" | grep -q "SMB connection re-established" || fail "the node log shows no reconnect"
  delete_pod rotate-writer
  kc delete pvc rotate-pvc --wait=false
}

# The node plugin is SIGKILLed while a pod writes, and started again as its manager would: the pod sees a pause,
# no error; the keeper kept the FUSE connection, the new plugin adopted it; then a second pod mounts the claim.
test_node_plugin_restart() {
  [[ ${E2E_FAKE_NODE:-0} == 1 ]] && return 0
  start_writer plugin-pvc plugin-writer
  local pv=$WRITER_PV from pid
  from=$(log_size)
  pid=$(cat "$E2E_STATE/run/smb3-csi-node.pid")
  kill -KILL "$pid"
  wait_for "node plugin $pid gone" 10 bash -c "! kill -0 $pid 2>/dev/null" || fail "the node plugin survived SIGKILL"
  echo "node plugin $pid killed with SIGKILL"
  sleep 1
  start_node_plugin
  wait_for "the new node plugin adopting the mount" 30 bash -c \
    "tail -c +$((from + 1)) '$E2E_STATE/logs/smb3-csi-node.log' | grep -q 'adopted a live mount'" \
    || fail "the new node plugin did not adopt the mount: $(node_log_since "$from" | tail -5)"
  sleep 2
  stop_writer "$pv"
  check_writer plugin-writer "$pv" node-plugin-sigkill
  node_log_since "$from" | grep -E "adopted a live mount|takeover" | tail -3
  delete_pod plugin-writer
  # A second pod on the same claim after the restart: NodeStage/NodePublish against the new plugin's state.
  pod_yaml plugin-reader "test \$(wc -l < /data/log.txt) -ge 10 && echo reader-ok" \
    "    persistentVolumeClaim: {claimName: plugin-pvc}" | kc apply -f -
  wait_pod plugin-reader | grep -q reader-ok || fail "a second pod could not read the claim after the restart"
  delete_pod plugin-reader
  kc delete pvc plugin-pvc --wait=false
}

# --- issue 15: two pods sharing a RWX claim serialise through a lock file ---
# Each pod increments a counter file LOCK_ROUNDS times, each read-increment-write under `flock -x` on a lock
# file of the volume; without the lock the two would lose increments. The final counter, read with smbclient,
# must be exactly twice LOCK_ROUNDS. busybox has no flock: the host's util-linux flock is run from a read-only
# hostPath of /usr with the host's loader (a merged-/usr Debian; the script says so when it is not).
LOCK_ROUNDS=100
LOCKER=$(cat <<'SH'
L=/host-usr/lib/x86_64-linux-gnu
touch /data/ready-$ME
for _ in $(seq 1 150); do [ -f /data/ready-a ] && [ -f /data/ready-b ] && break; sleep 0.2; done
i=0
while [ $i -lt $ROUNDS ]; do
  i=$((i + 1))
  "$L/ld-linux-x86-64.so.2" --library-path "$L" /host-usr/bin/flock -x /data/counter.lock \
    -c 'n=$(cat /data/counter); echo $((n + 1)) > /data/counter' || { echo "increment $i failed"; exit 1; }
done
echo "$ME incremented $i times"
SH
)
test_rwx_lock_file() {
  [[ ${E2E_FAKE_NODE:-0} == 1 ]] && return 0
  [[ -x /usr/bin/flock && -e /usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 ]] \
    || fail "needs the host's /usr/bin/flock (util-linux) and its loader in /usr/lib/x86_64-linux-gnu"
  pvc_yaml locks smb3 ReadWriteMany | kc apply -f -
  wait_bound locks
  local pv; pv=$(kc get pvc locks -o jsonpath='{.spec.volumeName}')
  printf '0\n' >"$E2E_STATE/counter"
  smbc "put $E2E_STATE/counter $pv/counter" >/dev/null || fail "cannot create the counter on the share"
  local volumes="    persistentVolumeClaim: {claimName: locks}
  - name: host-usr
    hostPath: {path: /usr, type: Directory}"
  for me in a b; do
    pod_yaml "locker-$me" "ME=$me; ROUNDS=$LOCK_ROUNDS; $LOCKER" "$volumes" "" \
      "}, {name: host-usr, mountPath: /host-usr, readOnly: true" | kc apply -f -
  done
  wait_pod locker-a default 240 || fail "locker-a failed"
  wait_pod locker-b default 240 || fail "locker-b failed"
  smbc "get $pv/counter $E2E_STATE/counter" >/dev/null || fail "no counter on the share"
  local got; got=$(tr -d '[:space:]' <"$E2E_STATE/counter")
  [[ $got == $((2 * LOCK_ROUNDS)) ]] || fail "the counter on the share is $got, not $((2 * LOCK_ROUNDS)): increments were lost"
  echo "counter on the share (smbclient): $got = 2 x $LOCK_ROUNDS locked increments"
  delete_pod locker-a; delete_pod locker-b
  kc delete pvc locks --wait=false
}

# --- issue 16: Kerberos against the AD DC (NTLM is disabled there, so nothing passes by falling back) ---
# dc_smbc CCACHE COMMANDS: the independent witness, MIT smbclient with Kerberos required (the tickets in CCACHE)
# and encryption required, on the share by the DC's name at its address.
# (smbclient finds no Kerberos mechanism with --use-krb5-ccache alone: KRB5CCNAME must name the cache too.)
dc_smbc() {
  KRB5_CONFIG=$DC_KRB5_CONF KRB5CCNAME=FILE:$1 smbclient "//$DC_NAME/$DC_SHARE" -I "$DC_IP" -s "$DC_SMB_CONF" --use-kerberos=required \
    --use-krb5-ccache="FILE:$1" --client-protection=encrypt -c "$2" 2>&1
}
# A StorageClass whose provisioner and node-stage Secret is a krb5cc_0 credential cache (MIT kinit, base64, as
# users make them), sec=krb5 and ip= (the DC's name does not resolve here: the controller and the node connect
# to the address, the principal is cifs/<name>). A pod writes and reads; smbclient with Kerberos reads the file;
# DeleteVolume (ccache, ip= from the volume id) removes the directory. Then a static PV whose node-stage Secret
# is a username and password, sec=krb5: the node gets its own tickets.
test_kerberos() {
  local cc=$E2E_STATE/krb5cc_0 base=krb5-e2e
  rm -f "$cc"
  KRB5_CONFIG=$DC_KRB5_CONF kinit -c "FILE:$cc" "$DC_PRINCIPAL" <<<"$DC_PASSWORD" >/dev/null || fail "kinit $DC_PRINCIPAL"
  echo "kinit $DC_PRINCIPAL: $(KRB5_CONFIG=$DC_KRB5_CONF klist -c "FILE:$cc" | grep -c krbtgt/) TGT in $cc"
  dc_smbc "$cc" "mkdir $base" >/dev/null || true
  kc -n "$NS" create secret generic smb-krb5 --from-literal=krb5cc_0="$(base64 -w0 "$cc")" \
    --dry-run=client -o yaml | kc apply -f - >/dev/null
  kc -n "$NS" create secret generic smb-krb5-password --from-literal=username="$DC_USER" \
    --from-literal=password="$DC_PASSWORD" --from-literal=domain="$DC_DOMAIN" --dry-run=client -o yaml | kc apply -f - >/dev/null
  kc apply -f - <<SC
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {name: smb3-krb5}
provisioner: $DRIVER
reclaimPolicy: Delete
volumeBindingMode: Immediate
mountOptions: [sec=krb5, "ip=$DC_IP"]
parameters:
  source: "//$DC_NAME/$DC_SHARE/$base"
  csi.storage.k8s.io/provisioner-secret-name: smb-krb5
  csi.storage.k8s.io/provisioner-secret-namespace: $NS
  csi.storage.k8s.io/node-stage-secret-name: smb-krb5
  csi.storage.k8s.io/node-stage-secret-namespace: $NS
SC
  pvc_yaml krb5-ccache smb3-krb5 ReadWriteMany | kc apply -f -
  wait_bound krb5-ccache
  local pv; pv=$(kc get pvc krb5-ccache -o jsonpath='{.spec.volumeName}')
  echo "CreateVolume over Kerberos (ccache Secret, ip=$DC_IP): $(kc get pv "$pv" -o jsonpath='{.spec.csi.volumeHandle}')"
  pod_yaml krb5-writer 'echo written-over-kerberos > /data/krb5.txt && cat /data/krb5.txt' \
    "    persistentVolumeClaim: {claimName: krb5-ccache}" | kc apply -f -
  wait_pod krb5-writer || fail "the pod on the Kerberos volume failed"
  dc_smbc "$cc" "get $base/$pv/krb5.txt $E2E_STATE/krb5.txt" >/dev/null \
    || fail "krb5.txt not on the DC's share under $base/$pv: $(dc_smbc "$cc" "ls $base/*")"
  [[ $(cat "$E2E_STATE/krb5.txt") == written-over-kerberos ]] || fail "content on the DC: $(cat "$E2E_STATE/krb5.txt")"
  echo "ccache Secret: $base/$pv/krb5.txt read back by smbclient --use-kerberos=required"
  delete_pod krb5-writer
  wait_for "unstage of $pv" 60 bash -c "! grep -qF '$pv' /proc/self/mounts" || fail "mounts left: $(mounts_of "$pv")"
  kc delete pvc krb5-ccache --wait=false
  wait_for "PV $pv deleted" 60 bash -c "! '$KUBECTL' --kubeconfig '$KUBECONFIG' get pv $pv" || fail "PV $pv not deleted"
  ! dc_smbc "$cc" "ls $base/*" | grep -qw "$pv" || fail "DeleteVolume left $base/$pv on the DC's share"
  echo "DeleteVolume over Kerberos removed $base/$pv"

  dc_smbc "$cc" "mkdir $base/static-password" >/dev/null || true
  kc apply -f - <<PV
apiVersion: v1
kind: PersistentVolume
metadata: {name: krb5-password}
spec:
  capacity: {storage: 1Gi}
  accessModes: [ReadWriteMany]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: ""
  mountOptions: [sec=krb5, "ip=$DC_IP"]
  claimRef: {namespace: default, name: krb5-password}
  csi:
    driver: $DRIVER
    volumeHandle: krb5-password-handle
    volumeAttributes: {source: "//$DC_NAME/$DC_SHARE/$base", subDir: static-password}
    nodeStageSecretRef: {name: smb-krb5-password, namespace: $NS}
PV
  printf 'apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: krb5-password}\nspec:\n  storageClassName: ""\n  volumeName: krb5-password\n  accessModes: [ReadWriteMany]\n  resources: {requests: {storage: 1Gi}}\n' | kc apply -f -
  wait_bound krb5-password
  pod_yaml krb5-password 'echo password-over-kerberos > /data/password.txt && cat /data/password.txt' \
    "    persistentVolumeClaim: {claimName: krb5-password}" | kc apply -f -
  wait_pod krb5-password || fail "the pod on the password Kerberos volume failed"
  dc_smbc "$cc" "get $base/static-password/password.txt $E2E_STATE/password.txt" >/dev/null \
    || fail "password.txt not on the DC's share"
  [[ $(cat "$E2E_STATE/password.txt") == password-over-kerberos ]] || fail "content on the DC: $(cat "$E2E_STATE/password.txt")"
  echo "password Secret: $base/static-password/password.txt read back by smbclient --use-kerberos=required"
  delete_pod krb5-password
  kc delete pvc krb5-password; kc delete pv krb5-password
}

run_test registration test_registration
run_test dynamic-pvc test_dynamic_pvc
run_test rwx-two-pods test_rwx_two_pods
run_test inline-ephemeral-secret test_inline_ephemeral_secret
run_test fsgroup-readonly test_fsgroup_readonly
run_test static-pv-subdir test_static_pv
run_test samba-restart test_samba_restart
run_test node-plugin-restart test_node_plugin_restart
run_test rwx-lock-file test_rwx_lock_file
run_test kerberos test_kerberos
# It rotates the password every later step would use.
run_test password-rotation test_password_rotation

# Last: the driver's logs of the whole run searched for every password the run used (plain, UTF-16LE,
# hex, base64); the first and the rotated one both went through Secrets and NodeStage requests.
test_secret_scan() {
  local run=$SMB3_TESTKIT_RUN_LOG component
  mkdir -p "$run/logs"
  for component in smb3-csi-node smb3-csi-controller smb3-csi-registrar; do
    cp "$E2E_STATE/logs/$component.log" "$run/logs/$component-0-0.log"
  done
  "$SECRET_SCAN" "$run" smb3-csi-node smb3-csi-controller smb3-csi-registrar
}
run_test secret-scan test_secret_scan

echo
printf '%s\n' "${RESULTS[@]}"
[[ -s $E2E_STATE/logs/pauses ]] && { echo "pauses seen by the pods:"; sed 's/^/  /' "$E2E_STATE/logs/pauses"; }
echo "$PASSED passed, $FAILED failed"
(( FAILED == 0 ))
