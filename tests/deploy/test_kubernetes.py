"""The Kubernetes manifests, validated offline against the API schemas and the real exporter."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import click
import jsonschema
import kubernetes_validate
import pytest
import requests
import yaml
from support import exporter_proc

from fmdiag import __version__, steprecord, steptrace
from fmdiag.simulate.nodes.readings import HostState, NodeState, ProcessState
from fmdiag.simulate.nodes.render import render_node

from .conftest import (
    FIXTURES,
    K8S,
    base_objects,
    container,
    json_patch,
    load_docs,
    parse_with_real_cli,
)

K8S_VERSION = "1.30.0"
CORE_KINDS = ("DaemonSet", "Service", "ServiceAccount", "Namespace")
OVERLAYS = ("servicemonitor", "privileged", "nvidia-runtime")


@pytest.fixture(scope="module")
def objs() -> dict[str, dict[str, Any]]:
    """The base's objects plus the ServiceMonitor of the servicemonitor overlay."""
    (monitor,) = load_docs(K8S / "servicemonitor" / "servicemonitor.yaml")
    return {**base_objects(), "ServiceMonitor": monitor}


def overlay_daemonset(daemonset: dict[str, Any], overlay: str) -> dict[str, Any]:
    """The DaemonSet as an overlay's JSON patches leave it (kustomize's JSON6902 semantics)."""
    kustomization = yaml.safe_load((K8S / overlay / "kustomization.yaml").read_text())
    assert kustomization["resources"][0] == "../base"
    out = daemonset
    for patch in kustomization.get("patches", []):
        target = patch["target"]
        assert (target["kind"], target["name"]) == ("DaemonSet", daemonset["metadata"]["name"])
        out = json_patch(out, yaml.safe_load((K8S / overlay / patch["path"]).read_text()))
    return out


def privileged_daemonset(daemonset: dict[str, Any]) -> dict[str, Any]:
    return overlay_daemonset(daemonset, "privileged")


# --- schema validation ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", CORE_KINDS)
def test_core_kinds_validate_strictly_against_the_1_30_api(
    objs: dict[str, dict[str, Any]], kind: str
) -> None:
    kubernetes_validate.validate(objs[kind], K8S_VERSION, strict=True)


def test_strict_validation_catches_a_misspelled_field(objs: dict[str, dict[str, Any]]) -> None:
    bad = json.loads(json.dumps(objs["DaemonSet"]))
    bad["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFS"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


def test_privileged_overlay_validates_and_only_changes_the_user(objs: dict[str, dict[str, Any]]) -> None:
    base = objs["DaemonSet"]
    root = privileged_daemonset(base)
    kubernetes_validate.validate(root, K8S_VERSION, strict=True)
    pod = root["spec"]["template"]["spec"]
    assert (pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsNonRoot"]) == (0, False)
    assert container(root)["securityContext"] == container(base)["securityContext"]  # still drop ALL
    assert container(root)["args"] == container(base)["args"]


def _servicemonitor_schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((FIXTURES / "servicemonitor-v1.schema.json").read_text())
    return schema


def test_servicemonitor_matches_its_crd_schema(objs: dict[str, dict[str, Any]]) -> None:
    jsonschema.validate(objs["ServiceMonitor"], _servicemonitor_schema())
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        kubernetes_validate.validate(objs["ServiceMonitor"], K8S_VERSION, strict=True)


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (["spec", "endpoints", 0, "interval"], "15 seconds"),
        (["spec", "endpoints", 0, "scheme"], "ftp"),
        (["spec", "endpoints", 0, "intervall"], "15s"),
        (["spec", "endpoints", 0, "relabelings", 0, "action"], "rename"),
        (["spec", "endpoints", 0, "relabelings", 0, "sourceLabels"], ["bad-label"]),
    ],
)
def test_servicemonitor_schema_rejects_what_the_api_server_would(
    objs: dict[str, dict[str, Any]], path: list[Any], value: object
) -> None:
    bad = json.loads(json.dumps(objs["ServiceMonitor"]))
    target = bad
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, _servicemonitor_schema())


# --- the objects fit together -----------------------------------------------------------------


def test_kustomization_lists_every_manifest() -> None:
    listed = set(yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())["resources"])
    present = {p.name for p in (K8S / "base").glob("*.yaml") if p.name != "kustomization.yaml"}
    assert listed == present


def test_service_servicemonitor_and_pods_select_each_other(objs: dict[str, dict[str, Any]]) -> None:
    ds, svc, sm, sa = objs["DaemonSet"], objs["Service"], objs["ServiceMonitor"], objs["ServiceAccount"]
    pod_labels = ds["spec"]["template"]["metadata"]["labels"]
    assert ds["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert svc["spec"]["clusterIP"] == "None"
    namespaces = {o["metadata"]["namespace"] for o in objs.values() if o["kind"] != "Namespace"}
    assert (
        namespaces
        == {objs["Namespace"]["metadata"]["name"]}
        == set(sm["spec"]["namespaceSelector"]["matchNames"])
    )
    assert ds["spec"]["template"]["spec"]["serviceAccountName"] == sa["metadata"]["name"]
    c = container(ds)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    (svc_port,) = svc["spec"]["ports"]
    assert svc_port["name"] == "metrics" and ports[svc_port["targetPort"]] == svc_port["port"]
    assert [e["port"] for e in sm["spec"]["endpoints"]] == ["metrics"]
    for probe in ("livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    listen = next(a for a in c["args"] if a.startswith("--web.listen-address="))
    assert listen.endswith(f":{ports['metrics']}")


def test_pod_is_unprivileged_and_mounts_the_host_read_only(objs: dict[str, dict[str, Any]]) -> None:
    pod = objs["DaemonSet"]["spec"]["template"]["spec"]
    c = container(objs["DaemonSet"])
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]} and sc["privileged"] is False
    assert pod["automountServiceAccountToken"] is False
    host_paths = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    assert set(host_paths.values()) == {
        "/sys",
        "/proc",
        "/sys/kernel/debug",
        "/var/tmp",
        "/var/lib/kubelet/pod-resources",
    }
    for mount in c["volumeMounts"]:
        if mount["name"] in host_paths:
            assert mount["readOnly"] is True, mount
    for resource in ("cpu", "memory"):
        assert resource in c["resources"]["requests"] and resource in c["resources"]["limits"]
    # Runs on every node whatever its taints, and is the last pod evicted.
    assert {"operator": "Exists"} in pod["tolerations"]
    assert pod["priorityClassName"] == "system-node-critical"
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ]
    assert any(e["key"] == "nvidia.com/gpu.present" for t in terms for e in t["matchExpressions"])


def test_image_labels_and_dockerfile_agree_with_the_package(objs: dict[str, dict[str, Any]]) -> None:
    ds = objs["DaemonSet"]
    assert container(ds)["image"] == f"fmdiag:{__version__}"
    assert ds["metadata"]["labels"]["app.kubernetes.io/version"] == __version__
    dockerfile = (K8S / "Dockerfile").read_text()
    user = re.search(r"^USER (\d+):(\d+)$", dockerfile, re.M)
    assert user is not None
    pod_sc = ds["spec"]["template"]["spec"]["securityContext"]
    assert (int(user[1]), int(user[2])) == (pod_sc["runAsUser"], pod_sc["runAsGroup"])
    assert re.search(r'^ENTRYPOINT \["fmdiag", "exporter"\]$', dockerfile, re.M)
    port = container(ds)["ports"][0]["containerPort"]
    assert f"EXPOSE {port}" in dockerfile
    repo = K8S.parents[2]
    for source in re.findall(r"^COPY (?!--from)(.+) \S+$", dockerfile, re.M):
        for item in source.split():
            assert (repo / item).exists(), f"Dockerfile copies {item}, which is not in the repository"


# --- the container's flags run the real exporter ------------------------------------------------


def test_container_args_are_flags_the_exporter_accepts(objs: dict[str, dict[str, Any]]) -> None:
    args = container(objs["DaemonSet"])["args"]
    params = parse_with_real_cli(args)
    assert params["path_sysfs"] == "/host/sys" and params["path_procfs"] == "/host/proc"
    assert params["opt__steps__spool_dir"] == "/host/var/tmp/fmdiag/steps"
    assert params["opt__steps__spool_dir"].endswith(steprecord.DEFAULT_SPOOL_DIR)
    # The Service's and probes' port is the one the exporter listens on.
    assert params["listen_address"] == ":9847"
    with pytest.raises(click.UsageError, match="No such option"):
        parse_with_real_cli([*args, "--collector.steps.no_such_flag=1"])


def _host_root(tmp: Path) -> Path:
    """A simulated node laid out as the DaemonSet's mounts show it, with a live step file."""
    root = tmp / "host"
    proc = ProcessState(
        pid=4242,
        name="pt_main_thread",
        cmdline=["python3", "train.py"],
        cpu_user_s=10.0,
        cpu_system_s=1.0,
        cpu_iowait_s=0.0,
        rss_bytes=1 << 30,
        read_bytes=1,
        write_bytes=2,
        threads=8,
        start_time_s=time.time() - 600,
    )
    state = NodeState(
        hostname="node-1",
        time_s=time.time(),
        host=HostState(cpu_seconds={"user": 100.0, "idle": 900.0}, ncpus=8, processes=[proc]),
    )
    render_node(state, root)
    spool = root / steprecord.DEFAULT_SPOOL_DIR.lstrip("/")
    with steptrace.StepTracer(spool, job="ds-test", rank=3, node="node-1") as tracer:
        for _ in range(4):
            with tracer.step(tokens=1):
                pass
    return root


def test_the_daemonset_args_start_a_working_exporter(objs: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    root = _host_root(tmp_path)
    args = [
        a.replace("=/host", f"={root}")
        for a in container(objs["DaemonSet"])["args"]
        if not a.startswith("--web.listen-address=")
    ]  # the helper binds 127.0.0.1:<free>
    with exporter_proc.ExporterProcess(args) as proc:
        health = requests.get(f"{proc.url}/healthz", timeout=10)
        assert health.status_code == 200
        body = requests.get(f"{proc.url}/metrics", timeout=30).text
    samples = exporter_proc.samples(body)
    assert exporter_proc.value(samples, "fmdiag_step_last", training_job="ds-test", rank="3") == 3
    assert exporter_proc.value(samples, "fmdiag_host_cpus") == 8
    assert exporter_proc.value(samples, "fmdiag_process_threads", pid="4242") == 8
    for collector in ("host", "steps"):
        assert exporter_proc.value(samples, "fmdiag_exporter_collector_success", collector=collector) == 1


def test_manifest_files_are_plain_yaml_documents() -> None:
    for path in sorted(K8S.rglob("*.yaml")):
        docs = load_docs(path)
        assert docs, path
        for doc in docs:
            assert isinstance(doc, (dict, list)), path


# --- overlays, Pod Security, attribution ----------------------------------------------------------


def test_pod_security_privileged_is_scoped_to_the_exporters_own_namespace(
    objs: dict[str, dict[str, Any]],
) -> None:
    ns = objs["Namespace"]
    labels = ns["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "privileged"
    assert ns["metadata"]["name"] == objs["DaemonSet"]["metadata"]["namespace"] != "monitoring"
    kinds = {o["kind"] for o in objs.values() if o["metadata"].get("namespace") == ns["metadata"]["name"]}
    assert kinds == {"DaemonSet", "Service", "ServiceAccount", "ServiceMonitor"}  # nothing else lives there


def test_the_base_has_no_crd_objects_and_the_servicemonitor_overlay_adds_one() -> None:
    base = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())
    kinds = {d["kind"] for name in base["resources"] for d in load_docs(K8S / "base" / name)}
    assert "ServiceMonitor" not in kinds and "PrometheusRule" not in kinds
    overlay = yaml.safe_load((K8S / "servicemonitor" / "kustomization.yaml").read_text())
    assert overlay["resources"] == ["../base", "servicemonitor.yaml"]


def test_the_servicemonitor_honours_the_workload_owner_labels(objs: dict[str, dict[str, Any]]) -> None:
    (endpoint,) = objs["ServiceMonitor"]["spec"]["endpoints"]
    assert endpoint["honorLabels"] is True  # else pod/namespace/container become exported_*


def test_the_nvidia_runtime_overlay_only_sets_the_runtime_class(objs: dict[str, dict[str, Any]]) -> None:
    base = objs["DaemonSet"]
    patched = overlay_daemonset(base, "nvidia-runtime")
    kubernetes_validate.validate(patched, K8S_VERSION, strict=True)
    assert patched["spec"]["template"]["spec"]["runtimeClassName"] == "nvidia"
    assert "runtimeClassName" not in base["spec"]["template"]["spec"]
    del patched["spec"]["template"]["spec"]["runtimeClassName"]
    assert patched == base


def _kustomize() -> list[str]:
    """The real kustomize: standalone (what .ci/run fetches where there is no kubectl) or kubectl's."""
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    pytest.fail("neither kustomize nor kubectl is installed: .ci/run fetches kustomize (.ci/fetch-kustomize)")


@pytest.mark.parametrize("overlay", ("base", *OVERLAYS))
def test_every_kustomization_builds_with_the_real_kustomize(overlay: str) -> None:
    out = subprocess.run([*_kustomize(), str(K8S / overlay)], capture_output=True, text=True, check=True)
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    kinds = sorted(d["kind"] for d in docs)
    expected = sorted(
        ["DaemonSet", "Namespace", "Service", "ServiceAccount"]
        + (["ServiceMonitor"] if overlay == "servicemonitor" else [])
    )
    assert kinds == expected
    for doc in docs:
        if doc["kind"] != "ServiceMonitor":
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_the_daemonset_reads_pod_owners_from_the_mounted_socket(
    objs: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    """The DaemonSet's args with the socket path it mounts, served by a real pod-resources server."""
    from support.kubelet import PodResourcesServer, pod

    ds = objs["DaemonSet"]
    (mount,) = [m for m in container(ds)["volumeMounts"] if m["name"] == "pod-resources"]
    args = container(ds)["args"]
    (flag,) = [a for a in args if a.startswith("--collector.kubernetes.pod-resources-socket=")]
    socket_path = flag.split("=", 1)[1]
    assert Path(socket_path).parent == Path(mount["mountPath"]) and mount["readOnly"] is True
    kubelet = PodResourcesServer()
    kubelet.pods = [pod("llama-0", "training", {"trainer": {"nvidia.com/gpu": ["GPU-1234"]}})]
    kubelet.start()
    root = _host_root(tmp_path)
    run_args = [
        a.replace("=/host", f"={root}").replace(socket_path, str(kubelet.socket))
        for a in args
        if not a.startswith("--web.listen-address=")
    ]
    try:
        with exporter_proc.ExporterProcess(run_args) as proc:
            samples = exporter_proc.samples(requests.get(f"{proc.url}/metrics", timeout=30).text)
    finally:
        kubelet.close()
    assert exporter_proc.value(samples, "fmdiag_exporter_collector_success", collector="kubernetes") == 1
    assert exporter_proc.value(samples, "fmdiag_gpu_pod_info", UUID="GPU-1234", pod="llama-0") == 1
