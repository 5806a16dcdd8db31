"""A simulated TEE for unit tests: providers from a test PKI, pinned (as a host would) to a
small workload manifest, the way `cloister serve --attestation simulated` runs."""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
from typing import Any

from attestation.reference import ReferenceValues
from attestation.simulated import SimulatedPki
from attestation.simulated import release as simulated_release
from attestation.simulated.twins import (
    SimulatedCollateral,
    SimulatedCpuProvider,
    SimulatedGpuProvider,
    twin,
)
from attestation.verify import Policy, TrustRoots
from attestation.workload import FORMAT, workload_digest
from gateway.attestation_routes import Attested
from proxy.trust import Trust

MODEL_DIGEST = "sha256:" + "ab" * 32
TEST_WORKLOAD: dict[str, Any] = {
    "format": FORMAT,
    "cloister": {"version": "0.0.0-test", "source_sha256": "00" * 32},
    "dependencies": {"engine_kind": "cpu", "lock_sha256": "11" * 32},
    "engine": {"vllm": "test", "environment": {},
               "models": [{"role": "generate", "name": "test-chat", "digest": MODEL_DIGEST,
                           "signer": None, "flags": ["--max-model-len", "2048"],
                           "engine_args": {"max_model_len": 2048}}]},
    "settings": {"insecure_plaintext": False, "max_tokens": None},
}


def workload(**settings: Any) -> dict[str, Any]:
    """The test workload with some settings changed."""
    changed = copy.deepcopy(TEST_WORKLOAD)
    changed["settings"].update(settings)
    return changed


def simulated(pki: SimulatedPki, manifest: dict[str, Any] | None = None, *,
              tdx: bool = False, pin: bytes | None = None) -> Attested:
    """Providers pinned at launch to `manifest` (or to `pin`; b"" for not pinned)."""
    manifest = TEST_WORKLOAD if manifest is None else manifest
    launch_pin = workload_digest(manifest) if pin is None else pin
    cpu = SimulatedCpuProvider(pki, twin=twin("simulated-tdx" if tdx else "simulated"),
                               launch_pin=launch_pin)
    return Attested(cpu, SimulatedGpuProvider(pki), SimulatedCollateral(pki), manifest)


def accepting(manifest: dict[str, Any] | None = None, **changes: Any) -> ReferenceValues:
    """Reference values that accept the simulated TEE running `manifest` (the test
    workload by default); `changes` replace fields of the result."""
    manifest = TEST_WORKLOAD if manifest is None else manifest
    values = simulated_release.reference_values(
        workload_digest(manifest).hex(), version=1, now=dt.datetime.now(dt.UTC))
    return dataclasses.replace(values, **changes)


def policy(*values: ReferenceValues, **limits: Any) -> Policy:
    """A client policy accepting the test workload on the simulated TEE (or `values`)."""
    return Policy(values or (accepting(),), **limits)


def trusting(pki: SimulatedPki, client_policy: Policy | None = None) -> Trust:
    """A client's trust in the simulated TEE (its roots), with a local policy."""
    return Trust(TrustRoots().with_simulated(pki.roots_pem()),
                 policy=client_policy if client_policy is not None else policy())
