#!/usr/bin/env bash
# Stops everything (stop.sh), unmounts whatever is left under the state dir (pod volumes, FUSE
# mounts, container rootfs), removes the cgroups the pods used, and deletes the state dir.
# The build cache ($E2E_CACHE) stays.
source "$(dirname "$0")/lib.sh"

bash "$E2E_DIR/stop.sh"
# Deepest first; lazy unmount as a last resort so a stuck FUSE mount cannot block teardown.
mapfile -t mounts < <(awk -v s="$E2E_STATE" 'index($2, s) == 1 {print $2}' /proc/self/mounts | sort -r)
for m in "${mounts[@]}"; do
  m=$(printf '%b' "$m")
  umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || log "could not unmount $m"
done
# Pod cgroups (cgroupfs driver, no QoS hierarchy): containerd puts them under k8s.io / the pod id.
for sub in /sys/fs/cgroup/*/; do
  for top in "$sub"k8s.io "$sub"kubepods; do
    [[ -d $top ]] || continue
    find "$top" -depth -type d -exec rmdir {} \; 2>/dev/null || true
  done
done
rm -rf "$E2E_STATE"
log "teardown done"
