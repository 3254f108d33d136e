#!/usr/bin/env python3
"""Chart checks for smb3-csi, driven by tests/chart.rs.

Renders charts/smb3-csi with helm-render over a matrix of values and Kubernetes
versions (KUBE_VERSIONS, passed as --kube-version), validates every rendering with
kubernetes-validate --strict for the version it was rendered for, and checks the
invariants that break real clusters when wrong (driver name, socket paths, mount
propagation, /dev/fuse, RBAC, sidecar versions the cluster can run, pod security and
priority). Subcommands:

  matrix     render + validate + invariants for every case and Kubernetes version,
             and helm lint --strict of every case
  migration  a csi-driver-smb values file (tests/chart/csi-driver-smb-values.yaml):
             its StorageClasses, what carries over, and the install-notes warnings
  bad-values values the chart must refuse, with the message it must give
  selftest   the invariant checks catch deliberately broken manifests
  deploy     deploy/smb3-csi.yaml is the default rendering; deploy/example/* validate;
             prints the example volume handles for the Rust side to parse

Tools come from the environment: HELM_RENDER, KUBERNETES_VALIDATE (paths), and this
interpreter needs PyYAML. Exit status 0 when everything holds; failures are printed.
"""

import copy
import os
import re
import shutil
import subprocess
import sys
import tempfile

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHART = os.path.join(ROOT, "charts", "smb3-csi")
DEPLOY = os.path.join(ROOT, "deploy")
# The oldest version Chart.yaml allows, the two releases around the sidecar switch
# (csi-provisioner v6 / csi-resizer v2 need 1.34) and one in between. kubernetes-validate
# 1.37.0 ships schemas for 1.25.0-1.37.0, so each is validated against its own schema.
KUBE_VERSIONS = ["1.28.0", "1.30.0", "1.33.0", "1.34.0"]
RELEASE = "smb3-csi"
MIGRATION_VALUES = os.path.join(ROOT, "tests", "chart", "csi-driver-smb-values.yaml")
# deploy/ is for clusters without Helm, of any supported version: rendered for the oldest.
DEPLOY_KUBE_VERSION = "1.28.0"
DEPLOY_HEADER = (
    "# Rendered from charts/smb3-csi with default values for Kubernetes 1.28 (sidecars that run on\n"
    "# every supported version) by scripts/render-deploy.sh; do not edit.\n"
)

# Sidecar tags the chart picks when none is set: (before 1.34, from 1.34).
AUTO_TAGS = {"csi-provisioner": ("v5.3.0", "v6.3.0"), "csi-resizer": ("v1.14.0", "v2.2.0")}

DEFAULT_IMAGES = {
    "csi-provisioner": "registry.k8s.io/sig-storage/csi-provisioner:",
    "csi-resizer": "registry.k8s.io/sig-storage/csi-resizer:",
    "liveness-probe": "registry.k8s.io/sig-storage/livenessprobe:v2.19.0",
    "node-driver-registrar": "registry.k8s.io/sig-storage/csi-node-driver-registrar:v2.17.0",
    "smb3-csi": "ghcr.io/smb3-csi/smb3-csi:0.1.0",
}

# StorageClass parameters the driver takes (it matches keys case-insensitively), besides csi.storage.k8s.io/*.
DRIVER_PARAMS = {"source", "subdir", "ondelete", "encryption"}

DRIVER_FLAGS = {
    "controller": {"--endpoint", "--driver-name", "--metrics-address", "--log-level", "--log-format", "--smb-encryption"},
    "node": {"--endpoint", "--node-id", "--driver-name", "--metrics-address", "--log-level", "--log-format",
             "--smb-encryption", "--state-dir", "--keeper-socket", "--keeper-spawn", "--linger-after-handover",
             "--kubelet-dir", "--smb-connect-timeout-secs", "--smb-pending-timeout-secs"},
}


def perms(scope, group, resource, verbs):
    return {(scope, group, resource, verb) for verb in verbs}


# What the sidecars and the driver call, from each sidecar's documented RBAC
# (deploy/kubernetes/rbac.yaml of external-provisioner v6 and external-resizer v2),
# narrowed to the features this driver uses: no snapshots, no attach
# (volumeattachments), no capacity tracking, resizer without --handle-volume-inuse-error.
PROVISIONER = (
    perms("cluster", "", "persistentvolumes", ["get", "list", "watch", "create", "patch", "delete"])
    | perms("cluster", "", "persistentvolumeclaims", ["get", "list", "watch", "update"])
    | perms("cluster", "storage.k8s.io", "storageclasses", ["get", "list", "watch"])
    | perms("cluster", "", "events", ["list", "watch", "create", "update", "patch"])
    | perms("cluster", "storage.k8s.io", "csinodes", ["get", "list", "watch"])
    | perms("cluster", "", "nodes", ["get", "list", "watch"])
    | perms("cluster", "storage.k8s.io", "volumeattributesclasses", ["get", "list", "watch"])
    # The StorageClass's provisioner secret, passed to CreateVolume/DeleteVolume.
    | perms("cluster", "", "secrets", ["get"])
)
RESIZER = (
    perms("cluster", "", "persistentvolumes", ["get", "list", "watch", "patch"])
    | perms("cluster", "", "persistentvolumeclaims", ["get", "list", "watch"])
    | perms("cluster", "", "persistentvolumeclaims/status", ["patch"])
    | perms("cluster", "", "events", ["list", "watch", "create", "update", "patch"])
    | perms("cluster", "storage.k8s.io", "volumeattributesclasses", ["get", "list", "watch"])
)


def leader_election(namespace):
    return perms("ns:" + namespace, "coordination.k8s.io", "leases", ["get", "watch", "list", "delete", "update", "create"])


def expected_permissions(case):
    controller = PROVISIONER | RESIZER | leader_election(case["namespace"])
    node = perms("cluster", "", "secrets", ["get"]) if case["inline"] else set()
    # Password rotation: the PVs (to find a volume's nodeStageSecretRef) and the Secrets, where asked.
    if case["rotation_all"] or case["rotation_namespaces"]:
        node |= perms("cluster", "", "persistentvolumes", ["get", "list"])
    if case["rotation_all"]:
        node |= perms("cluster", "", "secrets", ["get"])
    else:
        for ns in case["rotation_namespaces"]:
            node |= perms("ns:" + ns, "", "secrets", ["get"])
    return {case["controller_sa"]: controller, case["node_sa"]: node}


# ---------------------------------------------------------------- rendering


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


def render(values, namespace, kube_version="1.33.0", chart=CHART, extra=()):
    """(returncode, stdout, stderr) of helm-render with a values dict."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump(values, f)
        path = f.name
    try:
        p = run([os.environ["HELM_RENDER"], RELEASE, chart, "-n", namespace, "--kube-version", kube_version, "-f", path,
                 *extra])
    finally:
        os.unlink(path)
    return p.returncode, p.stdout, p.stderr


def lint(values, namespace):
    """helm lint --strict (templates rendered with missingkey=error, NOTES.txt included): values
    files leave keys out, so a template must not assume a user-given key exists."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump(values, f)
        path = f.name
    try:
        p = run([os.environ["HELM_RENDER"], "lint", CHART, "--strict", "-n", namespace, "-f", path])
    finally:
        os.unlink(path)
    return [] if p.returncode == 0 else [f"helm lint --strict: {p.stdout}{p.stderr}"]


NOTES_PROBE = """apiVersion: v1
kind: ConfigMap
metadata:
  name: notes-probe
data:
  notes: {{ include "smb3-csi/templates/NOTES.txt" . | quote }}
"""


def render_notes(values, namespace, kube_version):
    """The chart's NOTES.txt as `helm install` would print it (helm-render renders it but prints
    manifests only): a copy of the chart with one template that includes NOTES.txt."""
    with tempfile.TemporaryDirectory() as tmp:
        chart = os.path.join(tmp, "smb3-csi")
        shutil.copytree(CHART, chart)
        with open(os.path.join(chart, "templates", "zz-notes-probe.yaml"), "w") as f:
            f.write(NOTES_PROBE)
        rc, out, err = render(values, namespace, kube_version, chart=chart, extra=["-s", "templates/zz-notes-probe.yaml"])
    if rc != 0:
        raise AssertionError(f"NOTES render failed: {err}")
    return one(docs_of(out), "ConfigMap")["data"]["notes"]


def validate(text, label, versions=None):
    """kubernetes-validate --strict for each version (default: all); returns error strings."""
    errors = []
    for version in versions or KUBE_VERSIONS:
        p = run([os.environ["KUBERNETES_VALIDATE"], "-k", version, "--strict", "-"], input=text)
        out = p.stdout + p.stderr
        if p.returncode != 0:
            errors.append(f"{label}: kubernetes-validate {version} exit {p.returncode}:\n{out}")
        elif "Couldn't find schema" in out:
            errors.append(f"{label}: kubernetes-validate {version} has no schema for a kind:\n{out}")
        elif "passed" not in out:
            errors.append(f"{label}: kubernetes-validate {version} validated nothing:\n{out}")
    return errors


def docs_of(text):
    return [d for d in yaml.safe_load_all(text) if d]


# ---------------------------------------------------------------- invariants


def one(docs, kind):
    found = [d for d in docs if d["kind"] == kind]
    if len(found) != 1:
        raise AssertionError(f"expected one {kind}, found {len(found)}")
    return found[0]


def containers(workload):
    return workload["spec"]["template"]["spec"]["containers"]


def container(workload, name):
    for c in containers(workload):
        if c["name"] == name:
            return c
    raise AssertionError(f"{workload['kind']} {workload['metadata']['name']} has no container {name}")


def flags(args):
    """--name=value arguments as a dict (a bare --name maps to True)."""
    out = {}
    for a in args:
        if a.startswith("--"):
            name, eq, value = a.partition("=")
            out[name] = value if eq else True
    return out


def mount_volume(ctr, path):
    """The volume mounted exactly at `path` in the container, if any."""
    for m in ctr.get("volumeMounts", []):
        if m["mountPath"].rstrip("/") == path:
            return m["name"]
    return None


def host_path_of(workload, ctr, path):
    """The host path that `path` inside container `ctr` is, through its hostPath mounts."""
    volumes = {v["name"]: v for v in workload["spec"]["template"]["spec"].get("volumes", [])}
    best = None
    for m in ctr.get("volumeMounts", []):
        mp = m["mountPath"].rstrip("/")
        if path == mp or path.startswith(mp + "/"):
            if best is None or len(mp) > len(best[0]):
                best = (mp, m)
    if best is None:
        return None
    mp, m = best
    vol = volumes.get(m["name"], {})
    if "hostPath" not in vol:
        return None
    return vol["hostPath"]["path"].rstrip("/") + path[len(mp):]


def check(docs, case):
    """Every invariant for one rendering; returns a list of failures."""
    errors = []

    def expect(cond, msg):
        if not cond:
            errors.append(msg)

    name = case["driver"]
    kubelet = case["kubelet"].rstrip("/")
    try:
        csidriver = one(docs, "CSIDriver")
        deploy = one(docs, "Deployment")
        ds = one(docs, "DaemonSet")
    except AssertionError as e:
        return [str(e)]

    # CSIDriver
    spec = csidriver["spec"]
    expect(csidriver["metadata"]["name"] == name, f"CSIDriver is {csidriver['metadata']['name']}, not {name}")
    expect(spec.get("attachRequired") is False, "CSIDriver attachRequired must be false")
    expect(spec.get("podInfoOnMount") is True, "CSIDriver podInfoOnMount must be true")
    expect(spec.get("fsGroupPolicy") == "File", "CSIDriver fsGroupPolicy must be File")
    modes = ["Persistent", "Ephemeral"] if case["inline"] else ["Persistent"]
    expect(spec.get("volumeLifecycleModes") == modes, f"volumeLifecycleModes {spec.get('volumeLifecycleModes')} != {modes}")

    # StorageClasses: storageClass plus the storageClasses list, each with its source and Secrets,
    # and no parameter the driver would refuse.
    classes = {d["metadata"]["name"]: d for d in docs if d["kind"] == "StorageClass"}
    want_classes = case["storage_classes"]
    expect(sorted(classes) == sorted(want_classes), f"StorageClasses {sorted(classes)} != {sorted(want_classes)}")
    for sc_name, sc in classes.items():
        expect(sc["provisioner"] == name, f"StorageClass provisioner {sc['provisioner']} != driver {name}")
        p = sc["parameters"]
        expect(p.get("source") == want_classes.get(sc_name), f"StorageClass {sc_name} source {p.get('source')}")
        for role in ("provisioner", "node-stage"):
            expect(f"csi.storage.k8s.io/{role}-secret-name" in p, f"StorageClass {sc_name} lacks the {role} secret")
        for key in p:
            expect(key.lower() in DRIVER_PARAMS or key.startswith("csi.storage.k8s.io/"),
                   f"StorageClass {sc_name} parameter {key} is refused by the driver")

    # Driver containers: exactly the flags the binary accepts, one driver name, one socket.
    node_sock_host = None
    for workload, role in ((deploy, "controller"), (ds, "node")):
        try:
            drv = container(workload, "smb3-csi")
        except AssertionError as e:
            errors.append(str(e))
            continue
        args = drv.get("args", [])
        expect(args[:1] == [role], f"{role} container args must start with '{role}': {args}")
        f = flags(args[1:])
        expect(set(f) <= DRIVER_FLAGS[role], f"{role}: unknown flags {set(f) - DRIVER_FLAGS[role]}")
        expect(all(a.startswith("--") for a in args[1:]), f"{role}: stray argument in {args}")
        expect(f.get("--driver-name") == name, f"{role} --driver-name {f.get('--driver-name')} != {name}")
        endpoint = f.get("--endpoint", "")
        expect(endpoint.startswith("unix:///"), f"{role} --endpoint {endpoint!r} is not unix://")
        sock = endpoint[len("unix://"):]
        expect(drv.get("image") == case["images"]["smb3-csi"], f"{role} image {drv.get('image')}")
        expect(f.get("--log-format") in ("text", "json"), f"{role} --log-format {f.get('--log-format')}")
        port = case["metrics_port"][role]
        if port:
            expect(f.get("--metrics-address") == f":{port}", f"{role} --metrics-address {f.get('--metrics-address')}")
            ports = {p["name"]: p["containerPort"] for p in drv.get("ports", [])}
            expect(ports.get("metrics") == port, f"{role} metrics containerPort {ports.get('metrics')}")
        else:
            expect("--metrics-address" not in f, f"{role}: --metrics-address given with metricsPort 0")
        # The liveness probe hits the livenessprobe sidecar's --health-port through a named port.
        probe = drv.get("livenessProbe", {}).get("httpGet", {})
        expect(probe.get("path") == "/healthz", f"{role} liveness path {probe.get('path')}")
        lp = container(workload, "liveness-probe")
        lp_ports = {p["name"]: p["containerPort"] for p in lp.get("ports", [])}
        lp_flags = flags(lp["args"])
        # --health-port is deprecated in livenessprobe; --http-endpoint=[host]:port replaces it.
        expect("--health-port" not in lp_flags, f"{role} livenessprobe uses the deprecated --health-port")
        endpoint = str(lp_flags.get("--http-endpoint", ""))
        health = endpoint.rpartition(":")[2] if endpoint.startswith(":") else None
        expect(health is not None, f"{role} livenessprobe --http-endpoint {endpoint!r} is not :PORT")
        expect(str(lp_ports.get(probe.get("port"))) == str(health), f"{role} liveness port does not reach --http-endpoint {endpoint}")
        expect(str(health) == str(case["health_port"][role]), f"{role} livenessprobe port {health}")
        # Every sidecar talks to the same socket the driver serves.
        for c in containers(workload):
            addr = flags(c.get("args", [])).get("--csi-address")
            if addr is not None:
                expect(addr == sock, f"{role}/{c['name']} --csi-address {addr} != driver socket {sock}")
                expect(
                    mount_volume(c, os.path.dirname(sock)) == mount_volume(drv, os.path.dirname(sock)) is not None,
                    f"{role}/{c['name']} sees a different socket directory",
                )
        if role == "node":
            env = {e["name"]: e for e in drv.get("env", [])}
            expect(f.get("--node-id") == "$(NODE_NAME)", f"node --node-id {f.get('--node-id')}")
            expect(
                env.get("NODE_NAME", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "spec.nodeName",
                "NODE_NAME must come from spec.nodeName",
            )
            node_sock_host = host_path_of(ds, drv, sock)
            expect(
                node_sock_host == f"{kubelet}/plugins/{name}/csi.sock",
                f"node socket on the host is {node_sock_host}, not {kubelet}/plugins/{name}/csi.sock",
            )
        if role == "controller":
            vols = {v["name"]: v for v in deploy["spec"]["template"]["spec"]["volumes"]}
            expect(all("hostPath" not in v for v in vols.values()), "controller must not use hostPath volumes")

    # Registrar: registration path == host path of the node socket.
    registrars = [c for c in containers(ds) if c["name"] in ("node-driver-registrar", "registrar")]
    expect(len(registrars) == 1, f"{len(registrars)} registrar containers")
    for reg in registrars:
        f = flags(reg["args"])
        expect(
            f.get("--kubelet-registration-path") == node_sock_host,
            f"--kubelet-registration-path {f.get('--kubelet-registration-path')} != node socket {node_sock_host}",
        )
        expect(
            host_path_of(ds, reg, f.get("--csi-address", "")) == node_sock_host,
            "registrar --csi-address is not the node socket",
        )
        expect(
            host_path_of(ds, reg, "/registration") == f"{kubelet}/plugins_registry",
            f"registration dir is {host_path_of(ds, reg, '/registration')}, not {kubelet}/plugins_registry",
        )
        if case["registrar"] == "smb3-csi":
            expect(reg["name"] == "registrar" and reg["args"][0] == "registrar", "own registrar runs `smb3-csi registrar`")
            expect(reg["image"] == case["images"]["smb3-csi"], "own registrar uses the driver image")
        else:
            expect(reg["name"] == "node-driver-registrar", "node-driver-registrar expected")
            expect(reg["image"] == case["images"]["node-driver-registrar"], f"registrar image {reg['image']}")

    # Images and the controller sidecars' flags.
    for c in containers(deploy) + containers(ds):
        if c["name"] in case["images"] and c["name"] != "smb3-csi":
            expect(c["image"] == case["images"][c["name"]], f"{c['name']} image {c['image']}")
    prov = flags(container(deploy, "csi-provisioner")["args"])
    expect(prov.get("--extra-create-metadata") in (True, "true"), "csi-provisioner needs --extra-create-metadata")
    for side in ("csi-provisioner", "csi-resizer"):
        sf = flags(container(deploy, side)["args"])
        expect(sf.get("--leader-election") in (True, "true"), f"{side} needs --leader-election")
        expect(sf.get("--leader-election-namespace") == case["namespace"], f"{side} leader election namespace")
    # The resizer's RBAC has no pods: it must not watch them.
    expect(flags(container(deploy, "csi-resizer")["args"]).get("--handle-volume-inuse-error") == "false",
           "csi-resizer must run with --handle-volume-inuse-error=false (no pods RBAC)")

    # Bidirectional propagation only on a privileged container, /dev/fuse present.
    bidir = []
    for workload in (deploy, ds):
        for c in containers(workload) + workload["spec"]["template"]["spec"].get("initContainers", []):
            priv = c.get("securityContext", {}).get("privileged") is True
            for m in c.get("volumeMounts", []):
                if m.get("mountPropagation") == "Bidirectional":
                    bidir.append((workload["kind"], c["name"], m))
                    expect(priv, f"{workload['kind']}/{c['name']}: Bidirectional mount {m['mountPath']} on an unprivileged container")
            if workload is deploy:
                expect(not priv, f"controller container {c['name']} must not be privileged")
            elif c["name"] != "smb3-csi":
                expect(not priv, f"node sidecar {c['name']} must not be privileged")
    expect([(k, n) for k, n, _ in bidir] == [("DaemonSet", "smb3-csi")], f"Bidirectional mounts: {[(k, n) for k, n, _ in bidir]}")
    node = container(ds, "smb3-csi")
    expect(node.get("securityContext", {}).get("privileged") is True, "node driver container must be privileged")
    for _, _, m in bidir:
        expect(m["mountPath"].rstrip("/") == kubelet, f"Bidirectional mount at {m['mountPath']}, not the kubelet dir {kubelet}")
        expect(host_path_of(ds, node, kubelet) == kubelet, "kubelet dir must be mounted at its host path")
    expect(host_path_of(ds, node, "/dev/fuse") == "/dev/fuse", "/dev/fuse is not mounted into the node container")
    fuse_vols = [v for v in ds["spec"]["template"]["spec"]["volumes"] if v.get("hostPath", {}).get("path") == "/dev/fuse"]
    expect(len(fuse_vols) == 1 and fuse_vols[0]["hostPath"].get("type") == "CharDevice", "/dev/fuse hostPath must be a CharDevice")

    # Restart survival: a keeper container on the node plugin's socket directory, one socket per pod, the
    # plugin pointed at it and not starting its own; surge updates where the cluster has them.
    errors += check_restart_survival(ds, case)

    # Production settings: priorities, seccomp, a non-root controller, memory limits.
    errors += check_pods(deploy, ds, case)

    # Node pod token only when it has something to call.
    automount = ds["spec"]["template"]["spec"].get("automountServiceAccountToken", True)
    wants_api = bool(case["inline"] or case["rotation_all"] or case["rotation_namespaces"])
    expect(automount == wants_api, f"node automountServiceAccountToken {automount} with inline={case['inline']}, "
           f"rotation={case['rotation_all'] or case['rotation_namespaces']}")

    # RBAC: effective permissions of each ServiceAccount == what the components call.
    errors += check_rbac(docs, case, deploy, ds)
    errors += check_krb5(docs, case, deploy, ds)
    return errors


def check_krb5(docs, case, deploy, ds):
    """kerberos.krb5Conf / krb5ConfigMap: the ConfigMap (made of the text) mounted into both plugin
    containers with KRB5_CONFIG pointing at it; neither: no such volume, mount or variable."""
    errors = []
    want = case["krb5_configmap"]
    made = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-krb5-conf")]
    if case["krb5_text"]:
        if len(made) != 1 or made[0]["data"].get("krb5.conf", "").strip() != case["krb5_text"].strip():
            errors.append(f"krb5.conf ConfigMap {want} missing or not holding kerberos.krb5Conf: {made}")
    elif made:
        errors.append("a krb5.conf ConfigMap without kerberos.krb5Conf")
    for kind, workload in (("controller", deploy), ("node", ds)):
        spec = workload["spec"]["template"]["spec"]
        ctr = next(c for c in spec["containers"] if c["name"] == "smb3-csi")
        env = {e["name"]: e.get("value") for e in ctr.get("env", [])}
        mounts = {m["name"]: m for m in ctr.get("volumeMounts", [])}
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        if want:
            path = mounts.get("krb5-conf", {}).get("mountPath", "?") + "/krb5.conf"
            if env.get("KRB5_CONFIG") != path:
                errors.append(f"{kind}: KRB5_CONFIG {env.get('KRB5_CONFIG')} != the mounted {path}")
            if not mounts.get("krb5-conf", {}).get("readOnly"):
                errors.append(f"{kind}: krb5-conf not mounted read-only")
            if volumes.get("krb5-conf", {}).get("configMap", {}).get("name") != want:
                errors.append(f"{kind}: krb5-conf volume is not ConfigMap {want}: {volumes.get('krb5-conf')}")
        elif "KRB5_CONFIG" in env or "krb5-conf" in mounts or "krb5-conf" in volumes:
            errors.append(f"{kind}: krb5.conf wiring without kerberos values")
    return errors


def check_restart_survival(ds, case):
    errors = []

    def expect(cond, msg):
        if not cond:
            errors.append(msg)

    try:
        keeper = container(ds, "keeper")
        node = container(ds, "smb3-csi")
    except AssertionError as e:
        return [str(e)]
    expect(keeper.get("args", [])[:1] == ["keeper"], f"keeper container args {keeper.get('args')}")
    expect(keeper.get("image") == case["images"]["smb3-csi"], f"keeper image {keeper.get('image')}")
    kf, nf = flags(keeper["args"][1:]), flags(node["args"][1:])
    sock = kf.get("--socket", "")
    expect(set(kf) <= {"--socket", "--idle-exit-secs", "--log-level", "--log-format"}, f"keeper flags {sorted(kf)}")
    expect("$(POD_NAME)" in sock, f"keeper socket {sock!r} is not per pod (a surging pod needs its own)")
    expect(nf.get("--keeper-socket") == sock, f"node --keeper-socket {nf.get('--keeper-socket')} != keeper {sock}")
    expect(nf.get("--keeper-spawn") == "false", "the node plugin must not start its own keeper in the chart")
    expect(nf.get("--kubelet-dir", "").rstrip("/") == case["kubelet"].rstrip("/"),
           f"node --kubelet-dir {nf.get('--kubelet-dir')!r} is not the kubelet directory {case['kubelet']!r}")
    expect(nf.get("--linger-after-handover") is True, "the node plugin must linger after a handover (no restart loop)")
    for ctr in (keeper, node):
        env = {e["name"]: e for e in ctr.get("env", [])}
        field = env.get("POD_NAME", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
        expect(field == "metadata.name", f"{ctr['name']}: POD_NAME must come from metadata.name")
    keeper_host = host_path_of(ds, keeper, sock.rsplit("/", 1)[0])
    expect(keeper_host is not None and keeper_host == host_path_of(ds, node, sock.rsplit("/", 1)[0]),
           f"keeper socket dir {keeper_host} is not the node plugin's, or not on the host")
    state = nf.get("--state-dir", "")
    expect(host_path_of(ds, node, state) is not None, f"node --state-dir {state!r} is not on the host")
    expect(keeper.get("securityContext", {}).get("privileged") is not True, "the keeper needs no privilege")
    rolling = ds["spec"].get("updateStrategy", {}).get("rollingUpdate", {})
    expect(rolling.get("maxSurge") == 1 and rolling.get("maxUnavailable") == 0,
           f"node updateStrategy {rolling}: want maxSurge 1, maxUnavailable 0 (the new pod takes the mounts over)")
    return errors


def mebibytes(quantity):
    m = re.fullmatch(r"(\d+)(Ki|Mi|Gi)?", str(quantity))
    if not m:
        raise AssertionError(f"memory quantity {quantity!r}")
    return int(m.group(1)) * {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024, None: 1 / 2**20}[m.group(2)]


def check_pods(deploy, ds, case):
    errors = []

    def expect(cond, msg):
        if not cond:
            errors.append(msg)

    cpod, npod = deploy["spec"]["template"]["spec"], ds["spec"]["template"]["spec"]
    expect(cpod.get("priorityClassName") == case["priority"]["controller"],
           f"controller priorityClassName {cpod.get('priorityClassName')}")
    expect(npod.get("priorityClassName") == "system-node-critical",
           f"node priorityClassName {npod.get('priorityClassName')}: it carries every volume's data path")
    for role, pod in (("controller", cpod), ("node", npod)):
        sc = pod.get("securityContext", {})
        expect(sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", f"{role} pod seccompProfile {sc.get('seccompProfile')}")
    # The controller: non-root, read-only, no capabilities; its socket emptyDir writable through fsGroup.
    psc = cpod.get("securityContext", {})
    expect(psc.get("runAsNonRoot") is True, "controller pod must set runAsNonRoot")
    uid = psc.get("runAsUser")
    expect(isinstance(uid, int) and uid > 0, f"controller pod runAsUser {uid}")
    expect(psc.get("fsGroup") == psc.get("runAsGroup") and psc.get("fsGroup"),
           f"controller fsGroup {psc.get('fsGroup')} must be its runAsGroup {psc.get('runAsGroup')} (socket emptyDir)")
    socket_vol = next((v for v in cpod["volumes"] if v["name"] == "socket-dir"), {})
    expect("emptyDir" in socket_vol, "controller socket dir must be an emptyDir")
    drv = container(deploy, "smb3-csi")
    csc = drv.get("securityContext", {})
    expect(csc.get("runAsNonRoot") is True and csc.get("runAsUser", uid) > 0, f"controller container runs as root: {csc}")
    expect(csc.get("readOnlyRootFilesystem") is True, "controller container needs readOnlyRootFilesystem")
    expect(csc.get("allowPrivilegeEscalation") is False, "controller container must not escalate")
    expect(csc.get("capabilities", {}).get("drop") == ["ALL"] and not csc.get("capabilities", {}).get("add"),
           f"controller container capabilities {csc.get('capabilities')}")
    # Every container has a memory limit at least its request; the node plugin's leaves room for many volumes.
    for workload in (deploy, ds):
        for c in containers(workload):
            res = c.get("resources", {})
            limit, request = res.get("limits", {}).get("memory"), res.get("requests", {}).get("memory")
            expect(limit is not None and request is not None, f"{workload['kind']}/{c['name']} lacks memory request/limit")
            if limit is not None and request is not None:
                expect(mebibytes(request) <= mebibytes(limit), f"{workload['kind']}/{c['name']} request > limit")
    node_limit = container(ds, "smb3-csi").get("resources", {}).get("limits", {}).get("memory")
    if node_limit is not None and case["defaults_resources"]:
        # ~12 MiB + ~12.6 MiB per staged volume: the default must hold dozens of volumes.
        expect(mebibytes(node_limit) >= 12 + 12.6 * 40, f"node plugin memory limit {node_limit} holds too few volumes")
    # runOnControlPlane: the label's presence (k3s/RKE2 set "true", kubeadm ""), never a nodeSelector value.
    sel = cpod.get("nodeSelector", {})
    expect("node-role.kubernetes.io/control-plane" not in sel, "control-plane as a nodeSelector value leaves pods Pending on k3s/RKE2")
    terms = cpod.get("affinity", {}).get("nodeAffinity", {}).get("requiredDuringSchedulingIgnoredDuringExecution", {}) \
        .get("nodeSelectorTerms", [])
    cp_expr = {"key": "node-role.kubernetes.io/control-plane", "operator": "Exists"}
    if case["control_plane"]:
        expect(terms and all(cp_expr in t.get("matchExpressions", []) for t in terms),
               f"runOnControlPlane: every nodeSelectorTerm needs control-plane Exists: {terms}")
        expect(any(t.get("key") in (None, "node-role.kubernetes.io/control-plane") and t.get("operator") == "Exists"
                   for t in cpod.get("tolerations", [])), "runOnControlPlane without a control-plane toleration")
    else:
        expect(not any(cp_expr in t.get("matchExpressions", []) for t in terms), "control-plane affinity without runOnControlPlane")
    return errors


def check_rbac(docs, case, deploy, ds):
    errors = []
    roles = {}
    for d in docs:
        if d["kind"] in ("ClusterRole", "Role"):
            roles[(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"])] = d
    effective = {}
    for d in docs:
        if d["kind"] not in ("ClusterRoleBinding", "RoleBinding"):
            continue
        ref = d["roleRef"]
        ns = d["metadata"].get("namespace") if d["kind"] == "RoleBinding" else None
        role = roles.get((ref["kind"], ns if ref["kind"] == "Role" else None, ref["name"]))
        if role is None:
            errors.append(f"{d['kind']} {d['metadata']['name']} refers to missing {ref['kind']} {ref['name']}")
            continue
        scope = "cluster" if d["kind"] == "ClusterRoleBinding" else "ns:" + ns
        for subject in d.get("subjects", []):
            if subject.get("kind") != "ServiceAccount":
                errors.append(f"{d['metadata']['name']}: subject {subject} is not a ServiceAccount")
                continue
            if subject.get("namespace") != case["namespace"]:
                errors.append(f"{d['metadata']['name']}: subject namespace {subject.get('namespace')}")
            got = effective.setdefault(subject["name"], set())
            for rule in role.get("rules", []):
                if rule.get("resourceNames") or rule.get("nonResourceURLs"):
                    errors.append(f"{role['metadata']['name']}: unexpected resourceNames/nonResourceURLs")
                for g in rule.get("apiGroups", []):
                    for r in rule.get("resources", []):
                        for v in rule.get("verbs", []):
                            if "*" in (g, r, v):
                                errors.append(f"{role['metadata']['name']}: wildcard in {rule}")
                            got.add((scope, g, r, v))
    want = expected_permissions(case)
    for sa, perms_ in want.items():
        got = effective.get(sa, set())
        missing, extra = perms_ - got, got - perms_
        if missing:
            errors.append(f"ServiceAccount {sa} lacks {sorted(missing)}")
        if extra:
            errors.append(f"ServiceAccount {sa} has more than needed: {sorted(extra)}")
    for sa in set(effective) - set(want):
        errors.append(f"unexpected ServiceAccount {sa} in bindings")
    expect_sa = {
        deploy["spec"]["template"]["spec"].get("serviceAccountName"): case["controller_sa"],
        ds["spec"]["template"]["spec"].get("serviceAccountName"): case["node_sa"],
    }
    if set(expect_sa) != set(expect_sa.values()):
        errors.append(f"pods use ServiceAccounts {sorted(k for k in expect_sa if k)}, bindings name {sorted(expect_sa.values())}")
    accounts = {d["metadata"]["name"] for d in docs if d["kind"] == "ServiceAccount"}
    if accounts != {case["controller_sa"], case["node_sa"]}:
        errors.append(f"ServiceAccounts rendered: {sorted(accounts)}")
    return errors


# ---------------------------------------------------------------- cases


def kube_at_least(version, minor):
    major_, minor_ = (int(x) for x in version.split(".")[:2])
    return (major_, minor_) >= (1, minor)


def case_from(values, namespace="kube-system", kube_version="1.33.0"):
    """The expectations for a values dict (defaults filled in) rendered for a Kubernetes version."""
    get = lambda path, default: _dig(values, path, default)
    base = (get(["image", "baseRepo"], "") or "").rstrip("/")
    images = dict(DEFAULT_IMAGES)
    for key, ctr in (("csiProvisioner", "csi-provisioner"), ("csiResizer", "csi-resizer"),
                     ("livenessProbe", "liveness-probe"), ("nodeDriverRegistrar", "node-driver-registrar"),
                     ("smb", "smb3-csi")):
        repo, tag = images[ctr].rsplit(":", 1)
        repo = get(["image", key, "repository"], repo)
        tag = get(["image", key, "tag"], tag)
        if ctr in AUTO_TAGS and not tag:
            tag = AUTO_TAGS[ctr][kube_at_least(kube_version, 34)]
        if repo.startswith("/"):
            repo = base + repo
        if ctr == "smb3-csi" and repo.rstrip("/").rsplit("/", 1)[-1] == "smbplugin":
            # csi-driver-smb's own image in a carried-over values file: ours runs instead.
            repo, tag = DEFAULT_IMAGES["smb3-csi"].rsplit(":", 1)
        images[ctr] = f"{repo}:{tag or '0.1.0'}"
    classes = {}
    sc = values.get("storageClass", {})
    if sc.get("create"):
        classes[sc.get("name", "smb3")] = sc["source"]
    for item in values.get("storageClasses", []):
        classes[item["name"]] = next(v for k, v in item["parameters"].items() if k.lower() == "source")
    return {
        "namespace": namespace,
        "kube_version": kube_version,
        "driver": get(["driver", "name"], "smb3.csi.dev"),
        "kubelet": get(["linux", "kubelet"], "/var/lib/kubelet"),
        "inline": get(["feature", "enableInlineVolume"], False),
        "rotation_all": get(["node", "credentialsRotation", "allNamespaces"], False),
        "rotation_namespaces": get(["node", "credentialsRotation", "secretNamespaces"], []),
        "registrar": values.get("registrar", "node-driver-registrar"),
        "storage_classes": classes,
        "images": images,
        "controller_sa": get(["serviceAccount", "controller"], "smb3-csi-controller-sa"),
        "node_sa": get(["serviceAccount", "node"], "smb3-csi-node-sa"),
        "metrics_port": {"controller": get(["controller", "metricsPort"], 29744), "node": get(["node", "metricsPort"], 29745)},
        "health_port": {
            "controller": get(["controller", "livenessProbe", "healthPort"], 29742),
            "node": get(["node", "livenessProbe", "healthPort"], 29743),
        },
        "priority": {"controller": values.get("priorityClassName")
                     or get(["controller", "priorityClassName"], "system-cluster-critical")},
        "control_plane": bool(get(["controller", "runOnControlPlane"], False) or get(["controller", "runOnMaster"], False)),
        "defaults_resources": get(["linux", "resources", "smb"], None) is None,
        "krb5_text": get(["kerberos", "krb5Conf"], ""),
        "krb5_configmap": (get(["rbac", "name"], "smb3") + "-krb5-conf") if get(["kerberos", "krb5Conf"], "")
                          else get(["kerberos", "krb5ConfigMap"], ""),
    }


def _dig(d, path, default):
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return default
        d = d[p]
    return d


CASES = [
    ("defaults", {}, "kube-system"),
    ("inline-on", {"feature": {"enableInlineVolume": True}}, "kube-system"),
    ("inline-off", {"feature": {"enableInlineVolume": False}}, "kube-system"),
    # Password rotation: Secrets readable in the listed namespaces only, or everywhere when asked.
    ("rotation-namespaces", {"node": {"credentialsRotation": {"secretNamespaces": ["team-a", "kube-system"]}}},
     "kube-system"),
    ("rotation-cluster", {"node": {"credentialsRotation": {"allNamespaces": True, "secretNamespaces": ["ignored"]}}},
     "kube-system"),
    ("kubelet-dir", {"linux": {"kubelet": "/var/snap/microk8s/common/var/lib/kubelet/"}}, "kube-system"),
    ("storage-class", {"storageClass": {"create": True, "source": "//files.example.com/team/k8s",
                                        "subDir": "${pvc.metadata.namespace}/${pvc.metadata.name}",
                                        "onDelete": "archive", "isDefaultClass": True}}, "kube-system"),
    ("custom-images", {"image": {
        "smb": {"repository": "registry.example.com/storage/smb3-csi", "tag": "v9.9.9", "pullPolicy": "Always"},
        "csiProvisioner": {"repository": "mirror.example.com/csi-provisioner", "tag": "v6.3.0-mirror", "pullPolicy": "Always"},
        "csiResizer": {"repository": "mirror.example.com/csi-resizer", "tag": "v2.2.0-mirror", "pullPolicy": "Always"},
        "livenessProbe": {"repository": "mirror.example.com/livenessprobe", "tag": "v2.19.0-mirror", "pullPolicy": "Always"},
        "nodeDriverRegistrar": {"repository": "mirror.example.com/csi-node-driver-registrar", "tag": "v2.17.0-m",
                                "pullPolicy": "Always"}},
        "imagePullSecrets": ["regcred"]}, "kube-system"),
    ("own-registrar", {"registrar": "smb3-csi"}, "kube-system"),
    ("everything", {
        "driver": {"name": "smb3-b.csi.example.com"},
        "rbac": {"name": "smb3b"},
        "serviceAccount": {"controller": "b-controller", "node": "b-node"},
        "feature": {"enableInlineVolume": True},
        "registrar": "smb3-csi",
        "logFormat": "json",
        "linux": {"kubelet": "/var/lib/k0s/kubelet", "dsName": "smb3b-node"},
        "controller": {"name": "smb3b-controller", "replicas": 2, "metricsPort": 0, "runOnControlPlane": True,
                       "livenessProbe": {"healthPort": 39742}},
        "node": {"metricsPort": 0, "livenessProbe": {"healthPort": 39743}},
        "storageClass": {"create": True, "name": "smb3b", "source": "//10.0.0.5:1445/data", "secretNamespace": "creds"},
        "podLabels": {"team": "storage"}, "customLabels": {"tier": "infra"},
    }, "storage"),
    # runOnControlPlane ANDed into the user's own node affinity, the toleration added to an empty list.
    ("control-plane", {"controller": {
        "runOnControlPlane": True, "tolerations": [],
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]}]},
            {"matchExpressions": [{"key": "kubernetes.io/arch", "operator": "In", "values": ["arm64"]}]}]}}}}},
     "kube-system"),
    # Sidecar tags set by the user win over the version-based choice.
    ("pinned-sidecars", {"image": {"csiProvisioner": {"tag": "v5.2.0"}, "csiResizer": {"tag": "v1.13.2"}}}, "kube-system"),
    # A values file written for csi-driver-smb.
    ("csi-driver-smb", "file:" + MIGRATION_VALUES, "kube-system"),
    # Kerberos: krb5.conf from text (a ConfigMap of the chart) or from an existing ConfigMap.
    ("kerberos-text", {"kerberos": {"krb5Conf": "[libdefaults]\n  default_realm = CORP.EXAMPLE\n[realms]\n"
                                                "  CORP.EXAMPLE = {\n    kdc = dc1.corp.example\n  }\n"}},
     "kube-system"),
    ("kerberos-configmap", {"kerberos": {"krb5ConfigMap": "corp-krb5"}}, "kube-system"),
]


def load_values(values):
    """A case's values: a dict, or "file:PATH" for a values file."""
    if isinstance(values, str) and values.startswith("file:"):
        with open(values[len("file:"):]) as f:
            return yaml.safe_load(f)
    return values


def _case_values(name):
    return load_values(next(values for n, values, _ in CASES if n == name))


def cmd_matrix():
    failures = 0
    for name, values, ns in CASES:
        values = load_values(values)
        errors, counts = [], set()
        for kube in KUBE_VERSIONS:
            rc, out, err = render(values, ns, kube)
            if rc != 0:
                errors.append(f"{kube}: helm-render exit {rc}: {err}")
                continue
            errors += validate(out, f"{name} @ {kube}", [kube])
            if "Warning" in err or "WARNING" in err:
                errors.append(f"{kube}: helm-render warnings: {err}")
            errors += [f"{kube}: {e}" for e in check(docs_of(out), case_from(values, ns, kube))]
            counts.add(len(docs_of(out)))
        errors += lint(values, ns)
        if errors:
            failures += 1
            print(f"FAIL {name}:\n  " + "\n  ".join(errors))
        else:
            print(f"ok {name}: {'/'.join(map(str, sorted(counts)))} objects, rendered and valid for {', '.join(KUBE_VERSIONS)}")
    return failures


SECRET_CLASS = {"name": "ok", "parameters": {
    "source": "//srv/share",
    "csi.storage.k8s.io/provisioner-secret-name": "s", "csi.storage.k8s.io/provisioner-secret-namespace": "default",
    "csi.storage.k8s.io/node-stage-secret-name": "s", "csi.storage.k8s.io/node-stage-secret-namespace": "default"}}

BAD_VALUES = [
    ({"storageClass": {"create": True}}, "storageClass.source is required"),
    ({"registrar": "csi-node-driver-registrar"}, "registrar"),
    # An integer is a klog verbosity (csi-driver-smb) and is mapped; a negative one or an empty filter is not.
    ({"controller": {"logLevel": -1}}, "logLevel"),
    ({"node": {"logLevel": ""}}, "logLevel"),
    ({"linux": {"kubelet": "var/lib/kubelet"}}, "kubelet"),
    ({"feature": {"enableInlineVolume": "yes"}}, "enableInlineVolume"),
    ({"driver": {"name": "SMB3_CSI"}}, "name"),
    ({"logFormat": "xml"}, "logFormat"),
    ({"storageClass": {"onDelete": "shred"}}, "onDelete"),
    ({"featuer": {"enableInlineVolume": True}}, "featuer"),
    ({"kerberos": {"krb5ConfigMap": "Not_A_Name"}}, "krb5ConfigMap"),
    # csi-driver-smb keys are accepted by name only: a misspelt one is still refused.
    ({"controller": {"workingMountDirs": "/tmp"}}, "workingMountDirs"),
    ({"smbEncryption": "sometimes"}, "smbEncryption"),
    ({"image": {"livenessProbe": {"repository": "/sig-storage/livenessprobe"}}}, "image.baseRepo is empty"),
    # StorageClasses that could never work here fail the install, naming the class.
    ({"storageClasses": [{"name": "nosrc", "parameters": {"csi.storage.k8s.io/provisioner-secret-name": "s"}}]},
     "storageClasses[0] (nosrc): parameters.source is required"),
    ({"storageClasses": [{"name": "anon", "parameters": {"source": "//srv/share"}}]},
     "storageClasses[0] (anon): parameters csi.storage.k8s.io/provisioner-secret-name"),
    ({"storageClasses": [SECRET_CLASS, dict(SECRET_CLASS, name="guest", mountOptions=["dir_mode=0777,guest"])]},
     "storageClasses[1] (guest): mount option guest"),
    ({"storageClasses": [dict(SECRET_CLASS, name="smb2", mountOptions=["vers=2.0"])]},
     "storageClasses[0] (smb2): mount option vers=2.0"),
    ({"storageClasses": [dict(SECRET_CLASS, name="creds", mountOptions=["username=bob"])]},
     "storageClasses[0] (creds): mount option username"),
    ({"node": {"credentialsRotation": {"secretNamespaces": ["Team_A"]}}}, "secretNamespaces"),
]


def cmd_bad_values():
    failures = 0
    for values, needle in BAD_VALUES:
        rc, out, err = render(values, "kube-system")
        if rc == 0 or needle not in err:
            failures += 1
            print(f"FAIL {values}: exit {rc}, expected an error naming {needle!r}, got: {err.strip()[:300]}")
        else:
            print(f"ok refused {values}: {err.strip().splitlines()[-1][:160]}")
    return failures


def mutations():
    """(description, function mutating the default docs) the checks must catch."""

    def ds(docs):
        return one(docs, "DaemonSet")

    def deploy(docs):
        return one(docs, "Deployment")

    def set_flag(ctr, name, value):
        ctr["args"] = [a for a in ctr["args"] if not a.startswith(name + "=")] + [f"{name}={value}"]

    def m_registration(docs):
        set_flag(container(ds(docs), "node-driver-registrar"), "--kubelet-registration-path",
                 "/var/lib/kubelet/plugins/smb.csi.k8s.io/csi.sock")

    def m_driver_name(docs):
        one(docs, "CSIDriver")["metadata"]["name"] = "smb.csi.k8s.io"

    def m_node_flag(docs):
        container(ds(docs), "smb3-csi")["args"].append("--remove-smb-mapping-during-unmount=true")

    def m_bidir_sidecar(docs):
        container(ds(docs), "node-driver-registrar")["volumeMounts"][0]["mountPropagation"] = "Bidirectional"

    def m_unprivileged(docs):
        container(ds(docs), "smb3-csi")["securityContext"]["privileged"] = False

    def m_no_fuse(docs):
        c = container(ds(docs), "smb3-csi")
        c["volumeMounts"] = [m for m in c["volumeMounts"] if m["mountPath"] != "/dev/fuse"]

    def m_socket_dir(docs):
        for v in ds(docs)["spec"]["template"]["spec"]["volumes"]:
            if v["name"] == "socket-dir":
                v["hostPath"]["path"] = "/var/lib/kubelet/plugins/smb3"

    def m_wildcard(docs):
        for d in docs:
            if d["kind"] == "ClusterRole":
                d["rules"].append({"apiGroups": [""], "resources": ["*"], "verbs": ["get"]})
                break

    def m_missing_verb(docs):
        for d in docs:
            if d["kind"] == "ClusterRole" and d["metadata"]["name"].endswith("resizer-role"):
                d["rules"] = [r for r in d["rules"] if r["resources"] != ["persistentvolumeclaims/status"]]

    def m_node_secrets(docs):
        docs.append({"kind": "ClusterRole", "apiVersion": "rbac.authorization.k8s.io/v1", "metadata": {"name": "x"},
                     "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list"]}]})
        docs.append({"kind": "ClusterRoleBinding", "apiVersion": "rbac.authorization.k8s.io/v1", "metadata": {"name": "x"},
                     "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "x"},
                     "subjects": [{"kind": "ServiceAccount", "name": "smb3-csi-node-sa", "namespace": "kube-system"}]})

    def m_node_pvs(docs):
        docs.append({"kind": "ClusterRole", "apiVersion": "rbac.authorization.k8s.io/v1", "metadata": {"name": "y"},
                     "rules": [{"apiGroups": [""], "resources": ["persistentvolumes"], "verbs": ["get", "list"]}]})
        docs.append({"kind": "ClusterRoleBinding", "apiVersion": "rbac.authorization.k8s.io/v1", "metadata": {"name": "y"},
                     "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "y"},
                     "subjects": [{"kind": "ServiceAccount", "name": "smb3-csi-node-sa", "namespace": "kube-system"}]})

    def m_no_metadata(docs):
        c = container(deploy(docs), "csi-provisioner")
        c["args"] = [a for a in c["args"] if not a.startswith("--extra-create-metadata")]

    def m_ephemeral(docs):
        one(docs, "CSIDriver")["spec"]["volumeLifecycleModes"].append("Ephemeral")

    def m_health_port(docs):
        set_flag(container(ds(docs), "liveness-probe"), "--http-endpoint", ":9808")

    def m_deprecated_health_port(docs):
        c = container(ds(docs), "liveness-probe")
        c["args"] = [a for a in c["args"] if not a.startswith("--http-endpoint")] + ["--health-port=29743"]

    def m_node_priority(docs):
        ds(docs)["spec"]["template"]["spec"]["priorityClassName"] = "system-cluster-critical"

    def m_root_controller(docs):
        container(deploy(docs), "smb3-csi")["securityContext"]["runAsNonRoot"] = False
        deploy(docs)["spec"]["template"]["spec"]["securityContext"]["runAsUser"] = 0

    def m_writable_root(docs):
        del container(deploy(docs), "smb3-csi")["securityContext"]["readOnlyRootFilesystem"]

    def m_no_seccomp(docs):
        del ds(docs)["spec"]["template"]["spec"]["securityContext"]["seccompProfile"]

    def m_no_fsgroup(docs):
        del deploy(docs)["spec"]["template"]["spec"]["securityContext"]["fsGroup"]

    def m_empty_label_selector(docs):
        deploy(docs)["spec"]["template"]["spec"]["nodeSelector"]["node-role.kubernetes.io/control-plane"] = ""

    def m_no_memory_limit(docs):
        del container(ds(docs), "smb3-csi")["resources"]["limits"]

    def m_small_node_limit(docs):
        container(ds(docs), "smb3-csi")["resources"]["limits"]["memory"] = "200Mi"

    def m_no_keeper(docs):
        ds(docs)["spec"]["template"]["spec"]["containers"] = [
            c for c in containers(ds(docs)) if c["name"] != "keeper"]

    def m_shared_keeper_socket(docs):
        for name in ("keeper", "smb3-csi"):
            ctr = container(ds(docs), name)
            ctr["args"] = [a.replace("$(POD_NAME)", "keeper") for a in ctr["args"]]

    def m_no_surge(docs):
        ds(docs)["spec"]["updateStrategy"]["rollingUpdate"] = {"maxUnavailable": 1}

    def m_new_sidecar_on_old(docs):
        container(deploy(docs), "csi-provisioner")["image"] = "registry.k8s.io/sig-storage/csi-provisioner:v6.3.0"

    return [
        ("registration path of another driver", m_registration),
        ("CSIDriver name differs", m_driver_name),
        ("a flag the node binary does not take", m_node_flag),
        ("Bidirectional on a sidecar", m_bidir_sidecar),
        ("node container not privileged", m_unprivileged),
        ("/dev/fuse missing", m_no_fuse),
        ("plugin socket dir not <kubelet>/plugins/<driver>", m_socket_dir),
        ("wildcard RBAC", m_wildcard),
        ("resizer cannot patch claim status", m_missing_verb),
        ("node can read Secrets without inline volumes", m_node_secrets),
        ("node can list PersistentVolumes without password rotation", m_node_pvs),
        ("provisioner without --extra-create-metadata", m_no_metadata),
        ("Ephemeral mode without inline volumes", m_ephemeral),
        ("liveness probe port does not reach the sidecar", m_health_port),
        ("livenessprobe with the deprecated --health-port", m_deprecated_health_port),
        ("node plugin below system-node-critical", m_node_priority),
        ("controller as root", m_root_controller),
        ("controller with a writable root filesystem", m_writable_root),
        ("node pod without RuntimeDefault seccomp", m_no_seccomp),
        ("controller without fsGroup for its socket dir", m_no_fsgroup),
        ("control-plane nodeSelector with an empty value", m_empty_label_selector),
        ("node plugin without a memory limit", m_no_memory_limit),
        ("node plugin memory limit too small for its volumes", m_small_node_limit),
        ("csi-provisioner v6 on Kubernetes 1.28", m_new_sidecar_on_old),
        ("node pod without a keeper", m_no_keeper),
        ("one keeper socket for every pod", m_shared_keeper_socket),
        ("node updates without surge", m_no_surge),
    ]


def cmd_selftest():
    rc, out, err = render({}, "kube-system", "1.28.0")
    if rc != 0:
        print(f"FAIL: default render: {err}")
        return 1
    base = docs_of(out)
    case = case_from({}, "kube-system", "1.28.0")
    failures = 0
    if check(copy.deepcopy(base), case):
        print("FAIL: the unmodified rendering does not pass")
        failures += 1
    for desc, mutate in mutations():
        docs = copy.deepcopy(base)
        mutate(docs)
        errors = check(docs, case)
        if errors:
            print(f"ok caught: {desc}: {errors[0][:140]}")
        else:
            print(f"FAIL: not caught: {desc}")
            failures += 1
    # The schema validator must also be able to fail: a string port.
    broken = copy.deepcopy(base)
    container(one(broken, "Deployment"), "liveness-probe")["ports"][0]["containerPort"] = "29742"
    if not validate(yaml.safe_dump_all(broken), "broken", ["1.28.0"]):
        print("FAIL: kubernetes-validate accepted a string containerPort")
        failures += 1
    else:
        print("ok caught: kubernetes-validate rejects a string containerPort")
    return failures


def cmd_deploy():
    failures = 0
    rc, out, err = render({}, "kube-system", kube_version=DEPLOY_KUBE_VERSION)
    # render() passes -f with an empty values file; deploy/ is rendered with none. Same values.
    with open(os.path.join(DEPLOY, "smb3-csi.yaml")) as f:
        committed = f.read()
    if rc != 0:
        print(f"FAIL: default render: {err}")
        return 1
    if committed != DEPLOY_HEADER + out:
        print("FAIL: deploy/smb3-csi.yaml differs from the default rendering; run scripts/render-deploy.sh")
        failures += 1
    else:
        print("ok deploy/smb3-csi.yaml is the default rendering")
    errors = validate(committed, "deploy/smb3-csi.yaml")
    driver = case_from({})["driver"]
    # Rendered for the oldest version, deploy/ must run everywhere: the sidecars of the oldest.
    for d in docs_of(committed):
        if d["kind"] == "Deployment":
            for c in containers(d):
                want = case_from({}, "kube-system", DEPLOY_KUBE_VERSION)["images"].get(c["name"])
                if want and c["image"] != want:
                    errors.append(f"deploy/ {c['name']} image {c['image']} is not the {DEPLOY_KUBE_VERSION} one {want}")
    example_dir = os.path.join(DEPLOY, "example")
    names = sorted(os.listdir(example_dir))
    want = {"secret.yaml", "storageclass.yaml", "pvc.yaml", "pod.yaml", "pv-static.yaml", "pod-inline.yaml"}
    if not want <= set(names):
        errors.append(f"deploy/example lacks {sorted(want - set(names))}")
    kinds = {}
    for n in names:
        with open(os.path.join(example_dir, n)) as f:
            text = f.read()
        errors += validate(text, "deploy/example/" + n)
        for d in docs_of(text):
            kinds.setdefault(d["kind"], []).append(d)
    # The chart's own StorageClass goes through the driver's parser too.
    rc, out, err = render(_case_values("storage-class"), "kube-system")
    chart_classes = [d for d in docs_of(out) if d["kind"] == "StorageClass"] if rc == 0 else []
    if len(chart_classes) != 1:
        errors.append(f"storage-class case rendered {len(chart_classes)} StorageClasses: {err}")
    for sc in kinds.get("StorageClass", []) + chart_classes:
        if sc["provisioner"] != driver:
            errors.append(f"StorageClass {sc['metadata']['name']} provisioner {sc['provisioner']}")
        print(f"STORAGECLASS\t{sc['metadata']['name']}")
        for key, value in sorted(sc["parameters"].items()):
            if not isinstance(value, str) or "\t" in key + value or "\n" in key + value:
                errors.append(f"StorageClass parameter {key!r} must be a one-line string")
            print(f"PARAM\t{key}\t{value}")
    for pv in kinds.get("PersistentVolume", []):
        c = pv["spec"]["csi"]
        if c["driver"] != driver:
            errors.append(f"example PV driver {c['driver']}")
        if not c.get("nodeStageSecretRef", {}).get("name"):
            errors.append("example PV has no nodeStageSecretRef")
        a = c.get("volumeAttributes", {})
        print(f"STATICPV\t{c['volumeHandle']}\t{a.get('source', '')}\t{a.get('subDir', '')}")
    inline = [v for p in kinds.get("Pod", []) for v in p["spec"].get("volumes", []) if "csi" in v]
    if not inline:
        errors.append("no inline csi volume in the example pods")
    for v in inline:
        c = v["csi"]
        a = c.get("volumeAttributes", {})
        if c["driver"] != driver or not a.get("source") or not a.get("secretName"):
            errors.append(f"inline example volume {v['name']} needs driver, source and secretName")
        if "csi.storage.k8s.io/ephemeral" in a:
            errors.append("inline example must not set csi.storage.k8s.io/ephemeral (the kubelet does)")
        print(f"INLINE\t{a.get('source', '')}\t{a.get('subDir', '')}")
    for e in errors:
        print("FAIL " + e)
    if not errors:
        print(f"ok deploy/ and {len(names)} examples valid for {', '.join(KUBE_VERSIONS)}")
    return failures + len(errors)


# The warnings the install notes must give for tests/chart/csi-driver-smb-values.yaml: each
# csi-driver-smb key without a meaning here, the parameter left out of a class, the image.
MIGRATION_WARNINGS = {
    "ignored value feature.enableGetVolumeStats",
    "ignored value controller.workingMountDir",
    "ignored value controller.extraArgs",
    "ignored value node.nodeDriverRegistrar",
    "ignored value windows.dsName",
    "ignored value windows.enabled",
    "ignored value windows.kubelet",
    "ignored value windows.removeSMBMappingDuringUnmount",
    "ignored StorageClass parameter mountPermissions of smb",
    "ignored image.smb (registry.k8s.io/sig-storage/smbplugin)",
}


def warnings_of(notes):
    """The WARNING lines of the notes, each cut at its first ':' (the key part)."""
    return [line[len("WARNING: "):].split(":")[0] for line in notes.splitlines() if line.startswith("WARNING: ")]


def cmd_migration():
    failures = 0
    values = load_values("file:" + MIGRATION_VALUES)

    def report(label, errors):
        nonlocal failures
        if errors:
            failures += 1
            print(f"FAIL {label}:\n  " + "\n  ".join(errors))
        else:
            print(f"ok {label}")

    for kube in KUBE_VERSIONS:
        errors = []
        rc, out, err = render(values, "kube-system", kube)
        if rc != 0:
            report(f"csi-driver-smb values @ {kube}", [f"helm-render exit {rc}: {err}"])
            continue
        errors += validate(out, f"csi-driver-smb values @ {kube}", [kube])
        docs = docs_of(out)
        # Its StorageClasses, as listed: parameters minus mountPermissions, every field carried over.
        got = {d["metadata"]["name"]: d for d in docs if d["kind"] == "StorageClass"}
        want = values["storageClasses"]
        if sorted(got) != sorted(c["name"] for c in want):
            errors.append(f"StorageClasses {sorted(got)}, the file lists {[c['name'] for c in want]}")
        for c in want:
            sc = got.get(c["name"])
            if sc is None:
                continue
            params = {k: str(v) for k, v in c["parameters"].items() if k != "mountPermissions"}
            if sc["parameters"] != params:
                errors.append(f"{c['name']} parameters {sc['parameters']} != {params}")
            if sc["provisioner"] != "smb3.csi.dev":
                errors.append(f"{c['name']} provisioner {sc['provisioner']}")
            for field, default in (("reclaimPolicy", "Delete"), ("volumeBindingMode", "Immediate"),
                                   ("allowVolumeExpansion", True), ("mountOptions", None)):
                if sc.get(field) != c.get(field, default):
                    errors.append(f"{c['name']} {field} {sc.get(field)!r} != {c.get(field, default)!r}")
            for k, v in c.get("annotations", {}).items():
                if sc["metadata"].get("annotations", {}).get(k) != v:
                    errors.append(f"{c['name']} lacks annotation {k}")
        # What carries over: names, replicas, scheduling, log levels mapped, mirror, pull secret.
        dep, ds = one(docs, "Deployment"), one(docs, "DaemonSet")
        if (dep["metadata"]["name"], ds["metadata"]["name"]) != ("csi-smb-controller", "csi-smb-node"):
            errors.append(f"workload names {dep['metadata']['name']}, {ds['metadata']['name']}")
        if dep["spec"]["replicas"] != 2:
            errors.append(f"controller replicas {dep['spec']['replicas']}")
        levels = (flags(container(dep, "smb3-csi")["args"]).get("--log-level"),
                  flags(container(ds, "smb3-csi")["args"]).get("--log-level"))
        if levels != ("debug", "info"):
            errors.append(f"klog levels 5/2 became {levels}, not debug/info")
        for w in (dep, ds):
            spec = w["spec"]["template"]["spec"]
            if spec.get("imagePullSecrets") != [{"name": "mirror-pull"}]:
                errors.append(f"{w['kind']} imagePullSecrets {spec.get('imagePullSecrets')}")
            if spec.get("dnsPolicy") != "ClusterFirstWithHostNet":
                errors.append(f"{w['kind']} dnsPolicy {spec.get('dnsPolicy')}")
        if container(ds, "liveness-probe")["image"] != "mirror.example.com/sig-storage/livenessprobe:v2.15.0":
            errors.append(f"baseRepo not applied: {container(ds, 'liveness-probe')['image']}")
        # The install notes name every ignored key, and nothing that has a meaning here.
        notes = render_notes(values, "kube-system", kube)
        warned = warnings_of(notes)
        if sorted(warned) != sorted(MIGRATION_WARNINGS):
            errors.append(f"NOTES warnings {sorted(warned)}\n  != {sorted(MIGRATION_WARNINGS)}")
        for name in ("smb", "smb-retain"):
            if f"  {name} for " not in notes:
                errors.append(f"NOTES do not list StorageClass {name}")
        report(f"csi-driver-smb values @ {kube}: {len(got)} StorageClasses, {len(warned)} warnings", errors)

    # Default values warn about nothing; sidecars pinned to v6/v2 are warned about below 1.34 only.
    for label, vals, kube, want in (
        ("defaults", {}, "1.28.0", []),
        ("defaults", {}, "1.34.0", []),
        ("v6/v2 pinned", {"image": {"csiProvisioner": {"tag": "v6.3.0"}, "csiResizer": {"tag": "v2.2.0"}}}, "1.33.0",
         ["image.csiProvisioner.tag v6.3.0 needs the storage.k8s.io/v1 VolumeAttributesClass API of Kubernetes 1.34",
          "image.csiResizer.tag v2.2.0 needs the storage.k8s.io/v1 VolumeAttributesClass API of Kubernetes 1.34"]),
        ("v6/v2 pinned", {"image": {"csiProvisioner": {"tag": "v6.3.0"}, "csiResizer": {"tag": "v2.2.0"}}}, "1.34.0", []),
    ):
        notes = render_notes(vals, "kube-system", kube)
        got = [line for line in notes.splitlines() if line.startswith("WARNING: ")]
        ok = len(got) == len(want) and all(w in g for w, g in zip(want, got))
        report(f"notes {label} @ {kube}: {len(got)} warnings", [] if ok else [f"warnings {got}, expected {want}"])

    # linux.enabled: false (csi-driver-smb's switch) renders no node DaemonSet, and says so.
    vals = {"linux": {"enabled": False}}
    rc, out, err = render(vals, "kube-system", "1.34.0")
    errors = [f"helm-render exit {rc}: {err}"] if rc else []
    if not rc:
        docs = docs_of(out)
        kinds = [d["kind"] for d in docs]
        if "DaemonSet" in kinds or kinds.count("Deployment") != 1:
            errors.append(f"linux.enabled=false rendered {kinds}")
        errors += validate(out, "linux disabled", ["1.34.0"])
        if not any(w.startswith("linux.enabled is false") for w in warnings_of(render_notes(vals, "kube-system", "1.34.0"))):
            errors.append("NOTES do not warn that no node plugin runs")
    report("linux.enabled=false: no DaemonSet, warned", errors)
    return failures


def main():
    commands = {"matrix": cmd_matrix, "bad-values": cmd_bad_values, "selftest": cmd_selftest, "deploy": cmd_deploy,
                "migration": cmd_migration}
    if len(sys.argv) != 2 or sys.argv[1] not in commands:
        print(f"usage: {sys.argv[0]} {'|'.join(commands)}", file=sys.stderr)
        return 2
    failures = commands[sys.argv[1]]()
    print(f"{sys.argv[1]}: {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
