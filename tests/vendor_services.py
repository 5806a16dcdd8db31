"""A test double of Intel's PCS (API v4, as a PCCS serves it), AMD's KDS and NVIDIA's OCSP
responder (`POST /ocsp`), serving the simulated PKI's collateral over real HTTP on
localhost, counting what it is asked."""

from __future__ import annotations

import http.server
import threading
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from cryptography.x509 import ocsp

from attestation.simulated import SimulatedPki


class SimulatedVendorServices:
    def __init__(self, pki: SimulatedPki, **collateral: Any) -> None:
        self.pki = pki
        self.collateral_options = collateral
        self.requests: Counter[str] = Counter()
        self.url = ""

    def _answer(self, path: str) -> tuple[bytes, dict[str, str]]:
        intel = self.pki.intel.collateral(**self.collateral_options)

        def quoted(name: str) -> str:
            return urllib.parse.quote(intel[name])

        def signed(key: str, body: str, signature: str) -> bytes:
            return f'{{"{key}":{body},"signature":"{signature}"}}'.encode()

        if path == "/vcek/v1/Simulated/crl":
            return self.pki.amd_crl(**self.collateral_options), {}
        if path == "/sgx/certification/v4/pckcrl":
            return (bytes.fromhex(intel["pck_crl"]),
                    {"SGX-PCK-CRL-Issuer-Chain": quoted("pck_crl_issuer_chain")})
        if path == "/tdx/certification/v4/tcb":
            return (signed("tcbInfo", intel["tcb_info"], intel["tcb_info_signature"]),
                    {"TCB-Info-Issuer-Chain": quoted("tcb_info_issuer_chain")})
        if path == "/tdx/certification/v4/qe/identity":
            return (signed("enclaveIdentity", intel["qe_identity"],
                           intel["qe_identity_signature"]),
                    {"SGX-Enclave-Identity-Issuer-Chain": quoted("qe_identity_issuer_chain")})
        if path == "/sgx/certification/v4/rootcacrl":
            return intel["root_ca_crl"].encode(), {}  # a PCCS answers it in hex
        raise KeyError(path)

    @contextmanager
    def running(self) -> Iterator[SimulatedVendorServices]:
        services = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
                path = urllib.parse.urlparse(self.path).path
                services.requests[path] += 1
                try:
                    body, headers = services._answer(path)
                except KeyError:
                    self.send_response(404)
                    self.end_headers()
                    return
                self.send_response(200)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:  # noqa: N802 - NVIDIA's OCSP responder
                path = urllib.parse.urlparse(self.path).path
                services.requests[path] += 1
                asked = ocsp.load_der_ocsp_request(
                    self.rfile.read(int(self.headers["Content-Length"])))
                if path != "/ocsp" or asked.serial_number != services.pki.gpu_leaf.serial_number:
                    self.send_response(404)
                    self.end_headers()
                    return
                options = services.collateral_options
                body = services.pki.gpu_ocsp(now=options.get("now"),
                                             revoked=options.get("revoked", False))[0]
                self.send_response(200)
                self.send_header("Content-Type", "application/ocsp-response")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        self.url = f"http://127.0.0.1:{server.server_port}"
        try:
            yield self
        finally:
            server.shutdown()
            server.server_close()
            thread.join()
