"""Attested TLS: a key and certificate made inside the gateway process at start.

The certificate is self-signed; what makes it trustworthy is that the attestation report
binds the SHA-256 of its SubjectPublicKeyInfo (`tls-spki-sha256`), so a client that has
verified the report pins exactly this certificate (`cloister attest --write-cert`). The
private key never touches a disk: uvicorn wants paths, so `files()` hands it anonymous
in-memory files (`memfd_create`, read through `/proc/self/fd`) for as long as the server
loads its SSL context, and closes them at once.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from attestation.binding import spki_sha256

# A new key every start; the certificate outlives no realistic uptime.
VALIDITY = dt.timedelta(days=30)


@dataclass(frozen=True, repr=False)
class TlsIdentity:
    cert_pem: bytes
    key_pem: bytes
    spki_sha256: bytes

    def __repr__(self) -> str:
        return f"TlsIdentity(spki_sha256={self.spki_sha256.hex()}, key=[redacted])"

    @contextmanager
    def files(self) -> Iterator[tuple[str, str]]:
        """(certificate path, key path) of in-memory files, gone when the block ends."""
        fds = []
        try:
            for name, data in (("cloister-tls-cert", self.cert_pem),
                               ("cloister-tls-key", self.key_pem)):
                fd = os.memfd_create(name, os.MFD_CLOEXEC)
                fds.append(fd)
                os.write(fd, data)
            yield f"/proc/self/fd/{fds[0]}", f"/proc/self/fd/{fds[1]}"
        finally:
            for fd in fds:
                os.close(fd)


def make_tls_identity(hosts: list[str], *, fleet_secret: bytes | None = None) -> TlsIdentity:
    """A new key and certificate; or, in a fleet, the fleet's (`fleet_secret`): the same
    key and, byte for byte, the same certificate on every replica (deterministic ECDSA,
    a serial and validity derived from the secret and the day), so a client pins one."""
    if fleet_secret is None:
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
        serial = x509.random_serial_number()
    else:
        order = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551  # P-256 n
        key = ec.derive_private_key(int.from_bytes(fleet_secret, "big") % (order - 1) + 1,
                                    ec.SECP256R1())
        now = dt.datetime.now(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0) \
            - dt.timedelta(days=1)
        serial = int.from_bytes(fleet_secret[:16], "big") >> 1 or 1
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cloister attested TLS")])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(serial)
            .not_valid_before(now).not_valid_after(now + VALIDITY)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(key, hashes.SHA256(), ecdsa_deterministic=fleet_secret is not None))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return TlsIdentity(cert.public_bytes(serialization.Encoding.PEM), key_pem,
                       spki_sha256(cert))
