"""Release statements (in-toto in DSSE, signed by a release key), `cloister release`, and
`cloister measure snp` over sev-snp-measure."""

from __future__ import annotations

import base64
import datetime as dt
import json
from pathlib import Path

import pytest

from attestation.errors import Reason, VerificationError
from attestation.measure import MeasureError, snp_launch_measurement
from attestation.sigstore_statement import verify_sigstore_statement
from attestation.simulated import release as simulated_release
from attestation.statement import (
    generate_key,
    key_id,
    load_public_keys,
    load_values,
    pae,
    public_pem,
    sign_statement,
    verify_statement,
)
from cli.main import main

NOW = dt.datetime(2026, 12, 3, tzinfo=dt.UTC)
DEBIAN_OVMF = Path("/usr/share/ovmf/OVMF.fd")


def _values(version: int = 1, days: float = 7):
    return simulated_release.reference_values("ab" * 32, version=version,
                                              now=NOW + dt.timedelta(days=days - 7))


@pytest.mark.parametrize("kind", ["ecdsa-p256", "ed25519"])
def test_a_signed_statement_verifies_with_its_key(kind) -> None:
    key = generate_key(kind)
    envelope = sign_statement(_values(), key)
    verified = verify_statement(envelope, {key_id(key.public_key()): key.public_key()},
                                now=NOW)
    assert verified.values.workloads == frozenset({"ab" * 32})
    assert verified.key_id == key_id(key.public_key())
    body = json.loads(base64.b64decode(json.loads(envelope)["payload"]))
    assert body["_type"] == "https://in-toto.io/Statement/v1"
    assert body["subject"] == [{"name": "cloister-workload", "digest": {"sha256": "ab" * 32}}]


def test_pae_is_dssev1() -> None:
    assert pae("t", b"xy") == b"DSSEv1 1 t 2 xy"


def _trusted(key) -> dict:
    return {key_id(key.public_key()): key.public_key()}


def test_untrusted_tampered_expired_and_inconsistent_statements_are_refused() -> None:
    key, stranger = generate_key(), generate_key()
    envelope = sign_statement(_values(), key)
    with pytest.raises(VerificationError) as err:
        verify_statement(envelope, _trusted(stranger), now=NOW)
    assert err.value.reason is Reason.STATEMENT_UNTRUSTED
    outer = json.loads(envelope)
    body = json.loads(base64.b64decode(outer["payload"]))
    body["predicate"]["workloads"].append("cd" * 32)
    body["subject"].append({"name": "cloister-workload", "digest": {"sha256": "cd" * 32}})
    outer["payload"] = base64.b64encode(json.dumps(body).encode()).decode()
    with pytest.raises(VerificationError) as err:
        verify_statement(json.dumps(outer).encode(), _trusted(key), now=NOW)
    assert err.value.reason is Reason.STATEMENT_SIGNATURE
    with pytest.raises(VerificationError) as err:
        verify_statement(sign_statement(_values(days=-1), key), _trusted(key), now=NOW)
    assert err.value.reason is Reason.STATEMENT_EXPIRED
    for junk in (b"", b"{}", b'{"payloadType": "x", "payload": "", "signatures": []}'):
        with pytest.raises(VerificationError):
            verify_statement(junk, _trusted(key), now=NOW)


def test_values_toml_and_public_key_files(tmp_path) -> None:
    values = tmp_path / "VALUES.toml"
    values.write_text('version = 4\nvalid_days = 2\nworkloads = ["AB"]\n'
                      '[platforms.sev-snp]\nmeasurements = ["00"]\n')
    loaded = load_values(values, now=NOW)
    assert loaded.version == 4 and loaded.valid_until == NOW + dt.timedelta(days=2)
    keys = [generate_key(), generate_key("ed25519")]
    pem = b"".join(public_pem(k.public_key()) for k in keys)
    assert set(load_public_keys(pem)) == {key_id(k.public_key()) for k in keys}


def test_the_release_commands_round_trip(tmp_path, capsys) -> None:
    key = tmp_path / "release.key"
    assert main(["release", "keygen", "--out", str(key)]) == 0
    values = tmp_path / "VALUES.toml"
    values.write_text('version = 1\nworkloads = ["ab"]\n[platforms.tdx]\nmrtd = ["01"]\n')
    out = tmp_path / "statement.json"
    assert main(["release", "sign", "--key", str(key), "--values", str(values),
                 "--out", str(out)]) == 0
    assert main(["release", "verify", str(out), "--release-key", f"{key}.pub"]) == 0
    assert "VERIFIED" in capsys.readouterr().out
    other = tmp_path / "other.key"
    main(["release", "keygen", "--out", str(other)])
    assert main(["release", "verify", str(out), "--release-key", f"{other}.pub"]) == 1
    assert "statement_signed_by_untrusted_key" in capsys.readouterr().err


def test_a_sigstore_bundle_that_does_not_verify_is_refused() -> None:
    with pytest.raises(VerificationError) as err:
        verify_sigstore_statement(b'{"mediaType": "x"}', identity="a@example.com",
                                  issuer="https://accounts.example.com", trusted_root=None,
                                  now=NOW)
    assert err.value.reason is Reason.STATEMENT_SIGNATURE


def test_snp_launch_measurement_of_debian_ovmf_depends_on_vcpus_and_type() -> None:
    four = snp_launch_measurement(DEBIAN_OVMF, vcpus=4, vcpu_type="EPYC-v4")
    assert len(four) == 96 and four == snp_launch_measurement(DEBIAN_OVMF, vcpus=4,
                                                              vcpu_type="EPYC-v4")
    assert snp_launch_measurement(DEBIAN_OVMF, vcpus=8, vcpu_type="EPYC-v4") != four
    assert snp_launch_measurement(DEBIAN_OVMF, vcpus=4, vcpu_type="EPYC-Genoa") != four


def test_kernel_hashes_need_an_ovmf_built_for_them(tmp_path) -> None:
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"\x00" * 4096)
    with pytest.raises(MeasureError, match="cannot measure"):
        snp_launch_measurement(DEBIAN_OVMF, vcpus=1, vcpu_type="EPYC-v4", kernel=kernel,
                               append="console=ttyS0")


def test_unmeasurable_inputs_are_clear_errors(tmp_path) -> None:
    with pytest.raises(MeasureError, match="vCPU type"):
        snp_launch_measurement(DEBIAN_OVMF, vcpus=1, vcpu_type="Pentium")
    with pytest.raises(MeasureError, match="no OVMF"):
        snp_launch_measurement(tmp_path / "absent.fd", vcpus=1, vcpu_type="EPYC-v4")


def test_the_simulated_release_signs_once_per_workload_and_renews_with_a_new_version(
        tmp_path) -> None:
    """Clients refuse an equal version with other contents: a restart of `make serve`
    must serve the statement it served before, not a re-signed one with a new expiry."""
    trusted = load_public_keys(public_pem(simulated_release.release_key(tmp_path).public_key()))
    first = simulated_release.statement(tmp_path, "ab" * 32, now=NOW)
    assert simulated_release.statement(tmp_path, "ab" * 32, now=NOW + dt.timedelta(days=1)
                                       ) == first
    renewed = simulated_release.statement(tmp_path, "ab" * 32, now=NOW + dt.timedelta(days=5))
    other = simulated_release.statement(tmp_path, "cd" * 32, now=NOW + dt.timedelta(days=5))
    versions = [verify_statement(s, trusted, now=NOW + dt.timedelta(days=5)).values.version
                if s is not first else verify_statement(s, trusted, now=NOW).values.version
                for s in (first, renewed, other)]
    assert versions == [1, 2, 3]
