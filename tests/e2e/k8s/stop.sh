#!/usr/bin/env bash
# Stops the cluster daemons by PID, newest first. Pods' containers are stopped through containerd
# before containerd itself goes. State stays (start.sh resumes it); teardown.sh wipes it.
source "$(dirname "$0")/lib.sh"

# The harnesses (Samba + provisioner, the AD DC) and the fake node plugin stop cleanly when their stop file
# appears; stop_daemon signals whatever is still running after a few seconds.
if [[ -d $E2E_STATE/run ]]; then
  touch "$E2E_STATE/run/harness.stop" "$E2E_STATE/run/fake-node.stop" "$E2E_STATE/run/addc.stop"
  for _ in $(seq 1 25); do is_running smb3-csi-provisioner || is_running smb3-csi-addc || break; sleep 0.2; done
fi
for name in smb3-csi-provisioner smb3-csi-addc smb3-csi-registrar smb3-csi-node smb3-csi-controller kubelet; do
  stop_daemon "$name"
done
CTRD=$E2E_STATE/containerd
if is_running containerd; then
  ctr_() { ctr --address "$CTRD/containerd.sock" -n k8s.io "$@"; }
  for task in $(ctr_ tasks ls -q 2>/dev/null); do
    ctr_ tasks kill -s SIGKILL "$task" >/dev/null 2>&1 || true
  done
  sleep 1
  for task in $(ctr_ tasks ls -q 2>/dev/null); do ctr_ tasks delete -f "$task" >/dev/null 2>&1 || true; done
  for c in $(ctr_ containers ls -q 2>/dev/null); do ctr_ containers delete "$c" >/dev/null 2>&1 || true; done
fi
stop_daemon containerd
# Shims outlive containerd; each one's PID is in its bundle.
for pidf in "$CTRD"/state/io.containerd.runtime.v2.task/*/*/shim.pid; do
  [[ -f $pidf ]] || continue
  pid=$(cat "$pidf")
  if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then log "stopping shim $pid"; kill -KILL "$pid" 2>/dev/null || true; fi
done
for name in kube-controller-manager kube-apiserver etcd; do
  stop_daemon "$name"
done
