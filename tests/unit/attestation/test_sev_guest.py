"""The /dev/sev-guest provider against a fake ioctl (a test double playing the driver)."""

from __future__ import annotations

import ctypes
import errno
import struct

import pytest

from attestation import simulated
from attestation.certtable import VCEK_GUID, parse_cert_table
from attestation.providers import ProviderError
from attestation.sev_guest import SNP_GET_EXT_REPORT, GuestRequest, SevGuestProvider, _Request


class FakeSevGuest:
    """Answers SNP_GET_EXT_REPORT like the kernel driver: needs `need` bytes of certs."""

    def __init__(self, pki, *, need: int = 8192, status: int = 0) -> None:
        self.pki, self.need, self.status = pki, need, status
        self.calls: list[tuple[int, bytes, int]] = []

    def __call__(self, fd: int, request: int, arg: bytearray) -> int:
        assert request == SNP_GET_EXT_REPORT
        guest = GuestRequest.from_buffer_copy(bytes(arg))
        req = _Request.from_address(guest.req_data)
        self.calls.append((req.certs_len, bytes(req.user_data), req.vmpl))
        if req.certs_len < self.need:
            req.certs_len = self.need
            guest.vmm_error = 1
            arg[:] = bytes(guest)
            raise OSError(errno.EIO, "invalid length")
        report = simulated.snp_report(self.pki, bytes(req.user_data))
        body = struct.pack("<II", self.status, len(report)) + b"\x00" * 24 + report
        ctypes.memmove(guest.resp_data, body, len(body))
        table = self.pki.cert_table()
        ctypes.memmove(req.certs_address, table, len(table))
        return 0


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return simulated.SimulatedPki.load_or_create(tmp_path_factory.mktemp("pki"))


def _provider(fake) -> SevGuestProvider:
    import os

    return SevGuestProvider("/dev/null", ioctl=fake, opener=lambda p: os.open(p, os.O_RDONLY))


def test_report_and_certificates_after_growing_the_buffer(pki) -> None:
    fake = FakeSevGuest(pki, need=3 * 4096)
    evidence = _provider(fake).get_report(b"d" * 64)
    assert [c[0] for c in fake.calls] == [4096, 12288]
    assert fake.calls[-1][1] == b"d" * 64
    assert evidence.report[0x50:0x90] == b"d" * 64
    assert parse_cert_table(evidence.aux)[VCEK_GUID]


def test_firmware_error_status_is_a_provider_error(pki) -> None:
    with pytest.raises(ProviderError, match="status 22"):
        _provider(FakeSevGuest(pki, need=0, status=22)).get_report(b"d" * 64)


def test_implausible_certificate_size_is_refused(pki) -> None:
    with pytest.raises(ProviderError, match="implausible"):
        _provider(FakeSevGuest(pki, need=1 << 30)).get_report(b"d" * 64)


def test_missing_device_says_not_an_snp_guest() -> None:
    with pytest.raises(ProviderError, match="not an SNP guest"):
        SevGuestProvider("/nonexistent/sev-guest")
