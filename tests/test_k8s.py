"""launch/k8s: every manifest validates against the real schemas (core Kubernetes and the Kubeflow CRD)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT

pytestmark = pytest.mark.slow  # runs the schema validators as processes

K8S = ROOT / "launch" / "k8s"
CORE = ["service.yaml", "pvc.yaml", "job.yaml", "prepare-job.yaml"]
# The Kubeflow training-operator's CRD, kept beside the project (not copied into it).
CRD = ROOT.parent / "shared" / "k8s" / "kubeflow.org_pytorchjobs.yaml"


def tool(name: str) -> str:
    path = shutil.which(name) or str(Path(sys.executable).parent / name)
    if not Path(path).exists():
        pytest.skip(f"{name} is not installed: pip install -e '.[dev]'")
    return path


def kubernetes_validate(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([tool("kubernetes-validate"), "--strict", str(path)], capture_output=True, text=True)


@pytest.mark.parametrize("name", CORE)
def test_core_manifests_pass_strict_validation(name):
    proc = kubernetes_validate(K8S / name)
    assert proc.returncode == 0 and "passed" in proc.stdout + proc.stderr, proc.stdout + proc.stderr


def test_strict_validation_rejects_an_unknown_field(tmp_path):
    """The validator really checks: a typo in the Job's pod spec fails it."""
    job = yaml.safe_load((K8S / "job.yaml").read_text())
    job["spec"]["template"]["spec"]["terminationGracePeriod"] = 600
    bad = tmp_path / "job.yaml"
    bad.write_text(yaml.safe_dump(job))
    assert kubernetes_validate(bad).returncode != 0


def closed(schema: object) -> object:
    """The CRD schema with unknown fields refused: the API server would silently drop them (pruning)."""
    if isinstance(schema, dict):
        schema = {k: closed(v) for k, v in schema.items()}
        if ("properties" in schema and "additionalProperties" not in schema
                and not schema.get("x-kubernetes-preserve-unknown-fields")):
            schema["additionalProperties"] = False
    elif isinstance(schema, list):
        schema = [closed(v) for v in schema]
    return schema


@pytest.fixture
def pytorchjob_schema(tmp_path) -> Path:
    if not CRD.exists():
        pytest.skip(f"the Kubeflow PyTorchJob CRD is not at {CRD}: nothing to validate the PyTorchJob against")
    crd = yaml.safe_load(CRD.read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    path = tmp_path / "pytorchjob.schema.json"
    path.write_text(json.dumps(closed(version["schema"]["openAPIV3Schema"])))
    return path


def check_jsonschema(schema: Path, path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([tool("check-jsonschema"), "--schemafile", str(schema), str(path)], capture_output=True,
                          text=True)


def test_pytorchjob_passes_the_kubeflow_crd_schema(pytorchjob_schema, tmp_path):
    proc = check_jsonschema(pytorchjob_schema, K8S / "pytorchjob.yaml")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    job = yaml.safe_load((K8S / "pytorchjob.yaml").read_text())
    job["spec"]["pytorchReplicaSpecs"]["Worker"]["restartPolicy"] = 3  # not a string
    job["spec"]["runPolicy"]["backofLimit"] = 6  # a typo the API server would drop
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(job))
    proc = check_jsonschema(pytorchjob_schema, bad)
    assert proc.returncode != 0 and "restartPolicy" in proc.stdout and "backofLimit" in proc.stdout, proc.stdout


def test_the_pods_of_the_pytorchjob_are_core_valid(tmp_path):
    """The operator turns each replica template into a pod: check them as Kubernetes pods, strictly."""
    job = yaml.safe_load((K8S / "pytorchjob.yaml").read_text())
    for role, spec in job["spec"]["pytorchReplicaSpecs"].items():
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"dslm-{role.lower()}-0"},
               "spec": {**spec["template"]["spec"], "restartPolicy": spec["restartPolicy"]}}
        path = tmp_path / f"{role}.yaml"
        path.write_text(yaml.safe_dump(pod))
        proc = kubernetes_validate(path)
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_grace_period_covers_a_checkpoint_save_and_gpus_are_requested():
    job = yaml.safe_load((K8S / "job.yaml").read_text())
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert pod["terminationGracePeriodSeconds"] >= 300
    assert container["resources"]["limits"]["nvidia.com/gpu"] == env["NPROC_PER_NODE"]
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == int(env["NNODES"])
    assert pod["subdomain"] == yaml.safe_load((K8S / "service.yaml").read_text())["metadata"]["name"]
    assert job["spec"]["completionMode"] == "Indexed" and pod["restartPolicy"] == "Never"


def test_the_prepare_job_gives_each_pod_its_slice():
    job = yaml.safe_load((K8S / "prepare-job.yaml").read_text())
    spec = job["spec"]
    container = spec["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert spec["completionMode"] == "Indexed"
    assert int(env["NUM_SHARDS"]) == spec["completions"] == spec["parallelism"]
    command = " ".join(container["args"])
    assert '--num_shards "$NUM_SHARDS" --shard_index "$JOB_COMPLETION_INDEX"' in command
    assert int(env["WORKERS"]) == int(container["resources"]["requests"]["cpu"])
    claim = spec["template"]["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"]
    assert claim == yaml.safe_load((K8S / "pvc.yaml").read_text())["metadata"]["name"]
