#!/bin/sh
# Regenerates deploy/smb3-csi.yaml from charts/smb3-csi with default values, for users
# without Helm (kubectl apply -f deploy/smb3-csi.yaml). tests/chart.rs checks that the
# committed file is exactly this output, so run this after every chart change.
# It is rendered for Kubernetes 1.28, the oldest the chart supports, so that the
# version-dependent sidecars (csi-provisioner v5.3.0, csi-resizer v1.14.0) run on every
# supported cluster; `helm install` picks v6/v2 on 1.34 and newer by itself.
#   scripts/render-deploy.sh            rewrite deploy/smb3-csi.yaml
#   scripts/render-deploy.sh --stdout   print the rendering instead
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
HELM_RENDER=${HELM_RENDER:-$ROOT/../shared/tools/helm-render/helm-render}
OUT=$ROOT/deploy/smb3-csi.yaml

render() {
  printf '%s\n' "# Rendered from charts/smb3-csi with default values for Kubernetes 1.28 (sidecars that run on" \
    "# every supported version) by scripts/render-deploy.sh; do not edit."
  "$HELM_RENDER" smb3-csi "$ROOT/charts/smb3-csi" --namespace kube-system --kube-version 1.28.0
}

if [ "${1:-}" = "--stdout" ]; then
  render
else
  tmp=$(mktemp)
  trap 'rm -f "$tmp"' EXIT
  render >"$tmp"
  chmod 644 "$tmp"
  mv "$tmp" "$OUT"
  trap - EXIT
  echo "wrote $OUT" >&2
fi
