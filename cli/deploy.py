"""`cloister deploy coco`: the one measured path onto Kubernetes with Confidential
Containers. From an image referenced by digest and the gateway's flags it writes

    init-data.toml      the init-data document: the workload digest those flags describe
                        and the Kata agent policy that allows exactly this container
                        (`attestation.kata_policy`); its hash is what the hardware puts in
                        HOST_DATA (SNP) / MRCONFIGID (TDX) and what reference values pin
    cloister-coco.yaml  a ConfigMap holding that document (the gateway checks it against
                        the hardware field at start) and the Deployment: the image by
                        digest, `cloister serve` with those flags, the document in the
                        `cc_init_data` annotation, the Kata runtime class, nodes with GPUs in
                        CC mode (`nvidia.com/cc.mode`), one `nvidia.com/pgpu`, no service
                        links (the environment is an allow-list)

    cloister deploy coco --image REGISTRY/cloister@sha256:HEX --image-env-json env.json \\
        --out deploy-out/ [--env NAME=VALUE] [--config-map NAME:PATH] [--platform snp|tdx] \\
        -- SERVE_FLAGS...

`--image-env-json` is the image config's environment as `docker image inspect --format
'{{json .Config.Env}}' IMAGE` prints it: the policy names every variable the container
starts with, so it cannot guess them. The workload digest is computed here for the
pod's environment (its `VLLM_*` settings are measured), so the files the flags name must
resolve here as in the pod: run it in the image itself with the ConfigMaps' files and the
model mounted where the pod has them (`docker run --entrypoint cloister -v ... IMAGE
deploy coco ...`).
"""

from __future__ import annotations

import argparse
import base64
import gzip
import hashlib
import json
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

DIGEST_REFERENCE = re.compile(r"^[a-z0-9][a-z0-9._/:-]*@sha256:[0-9a-f]{64}$")
LAUNCH_FOLDER = "/etc/cloister-launch"
INIT_DATA_FILE = "init-data.toml"
INIT_DATA_ANNOTATION = "io.katacontainers.config.hypervisor.cc_init_data"
PLATFORMS = {  # runtime class, init-data hash (the launch field's size)
    "snp": ("kata-qemu-nvidia-gpu-snp", "sha256"),
    "tdx": ("kata-qemu-nvidia-gpu-tdx", "sha384"),
}


class DeployError(Exception):
    """What is wrong with what was asked; the message says what to give instead."""


def add_parser(sub: Any) -> None:
    deploy = sub.add_parser("deploy", help="write a measured deployment")
    kinds = deploy.add_subparsers(dest="kind", required=True)
    coco = kinds.add_parser("coco", help="Kubernetes with Confidential Containers: the pod "
                                         "manifest and its init-data (agent policy)")
    coco.add_argument("--image", required=True, help="REPOSITORY@sha256:HEX (never a tag)")
    coco.add_argument("--image-env-json", type=Path, required=True,
                      help="the image config's Env (docker image inspect ... .Config.Env)")
    coco.add_argument("--out", type=Path, required=True, help="the folder to write into")
    coco.add_argument("--name", default="cloister")
    coco.add_argument("--namespace", default="cloister")
    coco.add_argument("--replicas", type=int, default=1)
    coco.add_argument("--platform", choices=sorted(PLATFORMS), default="snp")
    coco.add_argument("--gpus", type=int, default=1, help="nvidia.com/pgpu per pod")
    coco.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                      help="an environment variable of the container (repeatable)")
    coco.add_argument("--config-map", action="append", default=[], metavar="NAME:PATH",
                      help="mount ConfigMap NAME read-only at PATH (repeatable): statements, "
                           "release keys")
    coco.add_argument("serve_flags", nargs=argparse.REMAINDER,
                      help="-- then the flags of `cloister serve` in the pod")


def _pairs(entries: Sequence[str], what: str) -> list[tuple[str, str]]:
    out = []
    for entry in entries:
        name, sep, value = entry.partition("=")
        if not sep or not name:
            raise DeployError(f"{what} {entry!r} is not NAME=VALUE")
        out.append((name, value))
    return out


def coco(args: argparse.Namespace, describe: Callable[[list[str], dict[str, str]], bytes]
         ) -> dict[str, Any]:
    """Write the deployment; what was written. `describe(serve_flags, env)`: the workload
    digest `cloister serve` with those flags and that environment attests."""
    from attestation.init_data import InitData, document
    from attestation.kata_policy import Container, agent_policy
    from enclave.isolation import refused_variables

    if not DIGEST_REFERENCE.match(args.image):
        raise DeployError(f"--image {args.image!r} is a tag, not a digest: name it as "
                          "REPOSITORY@sha256:HEX so that the policy pins what runs")
    try:
        image_env = _pairs(json.loads(args.image_env_json.read_text()), "image env")
    except (OSError, ValueError, TypeError) as exc:
        raise DeployError(f"--image-env-json: {exc}") from None
    pod_env = _pairs(args.env, "--env")
    env = dict(image_env + pod_env)
    refused = refused_variables(env)
    if refused:
        raise DeployError(f"the container would start with {', '.join(refused)}, which the "
                          "gateway refuses (its environment is an allow-list)")
    mounts = {LAUNCH_FOLDER: f"{args.name}-launch"}
    for entry in args.config_map:
        name, sep, path = entry.partition(":")
        if not sep or not path.startswith("/"):
            raise DeployError(f"--config-map {entry!r} is not NAME:/PATH")
        mounts[path] = name
    flags = list(args.serve_flags)
    if flags[:1] == ["--"]:
        flags = flags[1:]
    container_args = ["--launch-init-data", f"{LAUNCH_FOLDER}/{INIT_DATA_FILE}", *flags]
    workload = describe(container_args, env)
    runtime_class, algorithm = PLATFORMS[args.platform]
    container = Container(args.image, ("cloister", "serve", *container_args),
                          tuple(f"{k}={v}" for k, v in image_env + pod_env), tuple(mounts))
    init_data = document(workload, policy=agent_policy([container]), algorithm=algorithm)
    parsed = InitData.parse(init_data)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / INIT_DATA_FILE).write_bytes(init_data)
    manifest = _manifest(args, container_args, pod_env, mounts, init_data, runtime_class)
    (args.out / "cloister-coco.yaml").write_text(
        "\n---\n".join(json.dumps(doc, indent=2) for doc in manifest) + "\n")
    return {"workload": workload.hex(), "init_data": parsed.digest,
            "launch_field": base64.b64encode(parsed.launch_field(
                32 if algorithm == "sha256" else 48)).decode(),
            "image": args.image}


def _manifest(args: argparse.Namespace, container_args: list[str],
              pod_env: list[tuple[str, str]], mounts: dict[str, str], init_data: bytes,
              runtime_class: str) -> list[dict[str, Any]]:
    labels = {"app.kubernetes.io/name": args.name}
    compressed = gzip.compress(init_data, mtime=0)  # the same bytes on every run
    volumes = [{"name": f"v{hashlib.sha256(path.encode()).hexdigest()[:8]}",
                "configMap": {"name": name}, "path": path} for path, name in mounts.items()]
    return [
        {"apiVersion": "v1", "kind": "ConfigMap",
         "metadata": {"name": f"{args.name}-launch", "namespace": args.namespace},
         "data": {INIT_DATA_FILE: init_data.decode()}},
        {"apiVersion": "apps/v1", "kind": "Deployment",
         "metadata": {"name": args.name, "namespace": args.namespace, "labels": labels},
         "spec": {"replicas": args.replicas, "selector": {"matchLabels": labels},
                  "template": {
                      "metadata": {"labels": labels, "annotations": {
                          INIT_DATA_ANNOTATION: base64.b64encode(compressed).decode()}},
                      "spec": {
                          "runtimeClassName": runtime_class,
                          "enableServiceLinks": False,
                          "automountServiceAccountToken": False,
                          "nodeSelector": {"nvidia.com/cc.mode": "on"},
                          "containers": [{
                              "name": args.name, "image": args.image,
                              "command": ["cloister", "serve"], "args": container_args,
                              "env": [{"name": k, "value": v} for k, v in pod_env],
                              "ports": [{"name": "http", "containerPort": 8000}],
                              "resources": {"limits": {"nvidia.com/pgpu": str(args.gpus)}},
                              "volumeMounts": [{"name": v["name"], "mountPath": v["path"],
                                                "readOnly": True} for v in volumes]}],
                          "volumes": [{"name": v["name"], "configMap": v["configMap"]}
                                      for v in volumes]}}}},
    ]


def run(args: argparse.Namespace, describe: Callable[[list[str], dict[str, str]], bytes]
        ) -> int:
    try:
        written = coco(args, describe)
    except DeployError as exc:
        print(f"cloister deploy coco: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.out / INIT_DATA_FILE} and {args.out / 'cloister-coco.yaml'}\n"
          f"  workload   {written['workload']}\n"
          f"  init-data  {written['init_data']}  (launch field, base64: "
          f"{written['launch_field']})\n"
          f"  image      {written['image']}")
    return 0
