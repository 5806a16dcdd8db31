"""TLS that ends in the attested enclave: trust exactly the certificate whose key the
verified attestation report binds (`tls-spki-sha256`), not a certificate authority.

Used where a secret of the client's crosses the wire: `cloister admin`'s requests, and a
platform API key (Atoma with accounts). The report is fetched first over unverified TLS
(it vouches for itself); the certificate the listener then presents is checked against
the key the report binds, and only that certificate is trusted from then on.
"""

from __future__ import annotations

import asyncio
import ssl
from urllib.parse import urlsplit

from cryptography import x509

from attestation.binding import spki_sha256
from proxy.errors import GatewayNotAttested


def is_https(url: str) -> bool:
    return urlsplit(url).scheme == "https"


async def attested_certificate(gateway_url: str, attested: bytes | None) -> str:
    """The PEM certificate `gateway_url`'s TLS listener presents, if its key is the one
    the verified report binds (`attested`); `GatewayNotAttested` otherwise."""
    url = urlsplit(gateway_url)
    if url.scheme != "https":
        raise GatewayNotAttested("the attested TLS listener is an https:// URL")
    if attested is None:
        raise GatewayNotAttested("the report binds no TLS key")
    try:
        pem = await asyncio.to_thread(ssl.get_server_certificate,
                                      (url.hostname or "", url.port or 443))
    except OSError as exc:
        raise GatewayNotAttested("cannot reach the attested TLS listener") from exc
    if spki_sha256(x509.load_pem_x509_certificate(pem.encode())) != attested:
        raise GatewayNotAttested("the TLS certificate is not the one the report binds")
    return pem


def pinned_context(pem: str) -> ssl.SSLContext:
    """An SSL context that trusts this one certificate and nothing else."""
    return ssl.create_default_context(cadata=pem)
