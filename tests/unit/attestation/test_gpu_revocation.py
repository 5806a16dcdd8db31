"""A GPU whose certificate NVIDIA revoked is refused (issue 27): the gateway carries
NVIDIA's OCSP responses in the evidence's collateral, and every client checks them
offline. Each attack hands the verifier evidence from the simulated GPU with other
responses: revoked, missing, forged, delegated to a stranger, stale, about another
certificate."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp as x509_ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from attestation import ocsp
from attestation.collateral import Collateral
from attestation.errors import Reason, VerificationError
from attestation.simulated import SimulatedPki
from attestation.verify import Policy, TrustRoots
from attestation.x509chain import load_pem_chain
from testkit.attested import policy as client_policy
from tests.unit.attestation.test_hostile_evidence import (
    FixedCollateral,
    _document,
    _refused,
    _verify,
)

NOW = dt.datetime.now(dt.UTC)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> SimulatedPki:
    return SimulatedPki.load_or_create(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def roots(pki) -> TrustRoots:
    return TrustRoots().with_simulated(pki.roots_pem())


def _with(pki, responses: tuple[bytes, ...]) -> bytes:
    amd = pki.amd_crl()
    return _document(pki, collateral=FixedCollateral(Collateral(amd_crl=amd,
                                                                gpu_ocsp=responses)))


def _signed_by(pki, key, *, cert=None, extra: tuple[x509.Certificate, ...] = (),
               responder: x509.Certificate | None = None) -> bytes:
    builder = x509_ocsp.OCSPResponseBuilder().add_response(
        cert=cert or pki.gpu_leaf, issuer=pki.gpu_root, algorithm=hashes.SHA384(),
        cert_status=x509_ocsp.OCSPCertStatus.GOOD, this_update=NOW - dt.timedelta(hours=1),
        next_update=NOW + dt.timedelta(days=1), revocation_time=None, revocation_reason=None)
    builder = builder.responder_id(x509_ocsp.OCSPResponderEncoding.HASH,
                                   responder or pki.gpu_root)
    if extra:
        builder = builder.certificates(list(extra))
    return builder.sign(key, hashes.SHA384()).public_bytes(serialization.Encoding.DER)


def _responder(subject_key, issuer_name: x509.Name, issuer_key) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "OCSP responder")])
    return (x509.CertificateBuilder().subject_name(name).issuer_name(issuer_name)
            .public_key(subject_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(NOW - dt.timedelta(days=1))
            .not_valid_after(NOW + dt.timedelta(days=30))
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.OCSP_SIGNING]),
                           critical=False)
            .sign(issuer_key, hashes.SHA384()))


def test_a_good_response_is_accepted_and_a_delegated_responder_too(pki, roots) -> None:
    assert _verify(_with(pki, pki.gpu_ocsp()), roots).gpus
    delegate = ec.generate_private_key(ec.SECP384R1())
    responder = _responder(delegate, pki.gpu_root.subject, pki.gpu_root_key)
    delegated = _signed_by(pki, delegate, extra=(responder,), responder=responder)
    assert _verify(_with(pki, (delegated,)), roots).gpus


def test_a_revoked_gpu_certificate_is_refused(pki, roots) -> None:
    assert _refused(_with(pki, pki.gpu_ocsp(revoked=True)), roots) is Reason.REVOKED


def test_evidence_without_responses_is_refused_unless_the_policy_waives_it(pki, roots
                                                                           ) -> None:
    assert _refused(_with(pki, ()), roots) is Reason.COLLATERAL_MISSING
    waived: Policy = dataclasses.replace(client_policy(), check_revocation=False)
    assert _verify(_with(pki, ()), roots, waived).gpus


def test_a_forged_response_is_refused(pki, roots) -> None:
    forger = ec.generate_private_key(ec.SECP384R1())
    # named like the GPU's root, with the forger's key
    lookalike = _responder(forger, pki.gpu_root.subject, forger)
    forged = _signed_by(pki, forger, responder=lookalike)
    assert _refused(_with(pki, (forged,)), roots) is Reason.BAD_SIGNATURE
    # a "responder" with OCSP signing, but issued by someone else than the GPU's issuer
    stranger_ca = ec.generate_private_key(ec.SECP384R1())
    responder = _responder(forger, pki.gpu_root.subject, stranger_ca)
    planted = _signed_by(pki, forger, extra=(responder,), responder=responder)
    assert _refused(_with(pki, (planted,)), roots) is Reason.BAD_SIGNATURE


def test_a_stale_response_or_one_about_another_certificate_is_refused(pki, roots) -> None:
    stale = pki.gpu_ocsp(now=NOW - dt.timedelta(days=30))
    assert _refused(_with(pki, stale), roots) is Reason.COLLATERAL_STALE
    other = _signed_by(pki, pki.gpu_root_key, cert=pki.gpu_root)  # the root, not the leaf
    assert _refused(_with(pki, (other,)), roots) is Reason.COLLATERAL_MISSING


def test_requests_for_the_real_h100_chain_are_what_nvidia_is_asked(vectors) -> None:
    chain = load_pem_chain((vectors / "gpu" / "h100-cert-chain.pem").read_bytes())
    for cert, issuer in zip(chain, chain[1:], strict=False):
        asked = x509_ocsp.load_der_ocsp_request(ocsp.request(cert, issuer))
        assert asked.serial_number == cert.serial_number
        assert isinstance(asked.hash_algorithm, hashes.SHA384)
    with pytest.raises(VerificationError) as err:
        ocsp.check_chain(chain, (), now=NOW)
    assert err.value.reason is Reason.COLLATERAL_MISSING
