"""`cloister deploy coco` (issue 27): the image by digest, the pod manifest and its
init-data, whose Kata agent policy a real Rego engine (regopy) evaluates here as the
Kata agent would: the pinned container is allowed, and another image digest, an added
argument, an added environment variable, an exec, reading its logs or replacing the policy
are each denied."""

from __future__ import annotations

import base64
import copy
import gzip
import json
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from regopy import Interpreter

from attestation.init_data import InitData
from attestation.kata_policy import STANDARD_MOUNTS
from cli.main import main
from tests.unit.cli.test_deploy import K8S_VERSION

pytestmark = pytest.mark.slow  # outside processes or a browser: `-m "not slow"` skips it

IMAGE = "registry.example.com/cloister@sha256:" + "ab" * 32
IMAGE_ENV = ["PATH=/usr/local/bin:/usr/bin:/bin", "LANG=C.UTF-8", "PYTHON_VERSION=3.11.11",
             "PYTHONUNBUFFERED=1", "VLLM_NO_USAGE_STATS=1", "CLOISTER_STATE=/var/lib/cloister"]
SERVE = ["--host", "0.0.0.0", "--attestation", "simulated", "--embedding-model", "none",
         "--max-tokens", "512"]


class Deployed:
    def __init__(self, folder: Path, printed: str) -> None:
        self.init_data = (folder / "init-data.toml").read_bytes()
        self.documents = [json.loads(d) for d in
                          (folder / "cloister-coco.yaml").read_text().split("\n---\n")]
        self.printed = printed

    @property
    def pod(self) -> dict[str, Any]:
        deployment = next(d for d in self.documents if d["kind"] == "Deployment")
        return deployment["spec"]["template"]

    @property
    def policy(self) -> str:
        policy = InitData.parse(self.init_data).policy
        assert policy is not None
        return policy


def _deploy(tmp_path: Path, capsys, *extra: str, image: str = IMAGE) -> tuple[int, str]:
    env = tmp_path / "env.json"
    env.write_text(json.dumps(IMAGE_ENV))
    code = main(["deploy", "coco", "--image", image, "--image-env-json", str(env),
                 "--out", str(tmp_path / "out"), "--env", "VLLM_ENGINE_READY_TIMEOUT_S=900",
                 "--config-map", "cloister-release:/etc/cloister", *extra, "--", *SERVE])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


@pytest.fixture(scope="module")
def deployed(tmp_path_factory) -> Deployed:
    folder = tmp_path_factory.mktemp("coco")
    with pytest.MonkeyPatch.context() as mp:
        import io
        import sys

        out = io.StringIO()
        mp.setattr(sys, "stdout", out)
        env = folder / "env.json"
        env.write_text(json.dumps(IMAGE_ENV))
        assert main(["deploy", "coco", "--image", IMAGE, "--image-env-json", str(env),
                     "--out", str(folder), "--env", "VLLM_ENGINE_READY_TIMEOUT_S=900",
                     "--config-map", "cloister-release:/etc/cloister", "--", *SERVE]) == 0
    return Deployed(folder, out.getvalue())


def _create_container(pod: dict[str, Any], image_env: list[str]) -> dict[str, Any]:
    """The CreateContainerRequest the Kata agent gets for the pod's container, as the
    runtime builds it: the command line, the image's then the pod's environment plus what
    the runtime adds, the runtime's mounts plus the pod's."""
    container = pod["spec"]["containers"][0]
    return {"OCI": {
        "Annotations": {"io.kubernetes.cri.container-type": "container",
                        "io.kubernetes.cri.image-name": container["image"]},
        "Process": {"Args": container["command"] + container["args"],
                    "Env": image_env + [f"{e['name']}={e['value']}" for e in container["env"]]
                    + ["HOSTNAME=cloister-7d4f9-x2k", "KUBERNETES_SERVICE_HOST=10.96.0.1"]},
        "Mounts": [{"destination": d} for d in STANDARD_MOUNTS]
        + [{"destination": m["mountPath"]} for m in container["volumeMounts"]]},
        "storages": []}


def _allows(policy: str, rule: str, request: dict[str, Any]) -> bool:
    rego = Interpreter()
    rego.add_module("policy.rego", policy)
    rego.set_input_term(json.dumps(request))
    # a rule's default `false` makes `data...Rule` undefined as a query: ask for its value
    result = json.loads(str(rego.query(f"allowed := data.agent_policy.{rule}")))
    return result["bindings"]["allowed"] is True


def test_the_pinned_container_is_allowed_and_every_deviation_denied(deployed) -> None:
    policy, pinned = deployed.policy, _create_container(deployed.pod, IMAGE_ENV)
    assert _allows(policy, "CreateContainerRequest", pinned)
    sandbox = {"OCI": {"Annotations": {"io.kubernetes.cri.container-type": "sandbox"},
                       "Process": {"Args": ["/pause"], "Env": []},
                       "Mounts": [{"destination": "/dev/shm"}]}}
    assert _allows(policy, "CreateContainerRequest", sandbox)
    other_image = copy.deepcopy(pinned)
    other_image["OCI"]["Annotations"]["io.kubernetes.cri.image-name"] = \
        IMAGE.replace("ab" * 32, "cd" * 32)
    added_arg = copy.deepcopy(pinned)
    added_arg["OCI"]["Process"]["Args"].append("--insecure-plaintext")
    added_env = copy.deepcopy(pinned)
    added_env["OCI"]["Process"]["Env"].append("OPENSSL_CONF=/tmp/evil.cnf")
    other_mount = copy.deepcopy(pinned)
    other_mount["OCI"]["Mounts"].append({"destination": "/opt/cloister"})
    for deviation in (other_image, added_arg, added_env, other_mount):
        assert not _allows(policy, "CreateContainerRequest", deviation)
    exec_into = {"container_id": "x", "exec_id": "y", "process": {"Args": ["/bin/sh"]}}
    assert not _allows(policy, "ExecProcessRequest", exec_into)
    assert not _allows(policy, "ReadStreamRequest", {"container_id": "x", "exec_id": "x"})
    assert not _allows(policy, "SetPolicyRequest", {"policy": "package agent_policy"})
    assert not _allows(policy, "CopyFileRequest", {"path": "/etc/cloister/statement.json"})
    shared = "/run/kata-containers/shared/containers/" + "a" * 64 + "-" + "b" * 16 + "-hosts"
    assert _allows(policy, "CopyFileRequest", {"path": shared})


def test_the_pod_carries_the_init_data_that_names_the_workload(deployed) -> None:
    annotation = deployed.pod["metadata"]["annotations"][
        "io.katacontainers.config.hypervisor.cc_init_data"]
    assert gzip.decompress(base64.b64decode(annotation)) == deployed.init_data
    config_map = next(d for d in deployed.documents if d["kind"] == "ConfigMap")
    assert config_map["data"]["init-data.toml"].encode() == deployed.init_data
    parsed = InitData.parse(deployed.init_data)
    assert f"workload   {parsed.workload_digest}" in deployed.printed
    assert parsed.digest in deployed.printed
    spec = deployed.pod["spec"]
    container = spec["containers"][0]
    assert container["image"] == IMAGE and spec["runtimeClassName"].startswith("kata-")
    assert spec["nodeSelector"] == {"nvidia.com/cc.mode": "on"}
    assert container["resources"]["limits"] == {"nvidia.com/pgpu": "1"}
    assert spec["enableServiceLinks"] is False
    for document in deployed.documents:
        kubernetes_validate.validate(document, K8S_VERSION, strict=True)


def test_the_pods_vllm_settings_are_in_the_workload_digest(deployed, tmp_path, capsys) -> None:
    code, printed = _deploy(tmp_path, capsys, "--env", "VLLM_ENGINE_READY_TIMEOUT_S=60")
    assert code == 0
    assert InitData.parse((tmp_path / "out" / "init-data.toml").read_bytes()
                          ).workload_digest not in deployed.printed


@pytest.mark.parametrize(("extra", "image", "said"), [
    ((), "registry.example.com/cloister:0.1.0", "is a tag, not a digest"),
    ((), "registry.example.com/cloister:latest@sha256:abc", "is a tag, not a digest"),
    (("--env", "OPENSSL_CONF=/tmp/x"), IMAGE, "OPENSSL_CONF"),
    (("--env", "SOMETHING_UNLISTED=1"), IMAGE, "SOMETHING_UNLISTED"),
])
def test_a_tag_or_a_refused_variable_writes_nothing(tmp_path, capsys, extra, image,
                                                    said) -> None:
    code, printed = _deploy(tmp_path, capsys, *extra, image=image)
    assert code == 2 and said in printed
    assert not (tmp_path / "out").exists()
