"""SEV-SNP reports from `/dev/sev-guest` (SNP_GET_EXT_REPORT), for kernels without
configfs-tsm.

Linux uapi `include/uapi/linux/sev-guest.h`:
    struct snp_report_req      { u8 user_data[64]; u32 vmpl; u8 rsvd[28]; }          96 bytes
    struct snp_ext_report_req  { struct snp_report_req data; u64 certs_address;
                                 u32 certs_len; }                                  (+pad) 112
    struct snp_report_resp     { u8 data[4000]; }   MSG_REPORT_RSP: status u32, report_size
                                                    u32, reserved[24], report
    struct snp_guest_request_ioctl { u8 msg_version; u64 req_data; u64 resp_data;
                                     u64 exitinfo2 (fw_error u32, vmm_error u32); }   32
    SNP_GET_EXT_REPORT = _IOWR('S', 0x2, struct snp_guest_request_ioctl)
A certificate buffer that is too small fails with vmm_error 1 (INVALID_LEN) and the
needed size in certs_len; the call is then repeated with a buffer that size. The
certificates come back as a GHCB certificate table (VCEK, ASK, ARK).
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import struct
from collections.abc import Callable

from attestation.types import CpuEvidence, ProviderError

DEVICE = "/dev/sev-guest"
SNP_GET_EXT_REPORT = (3 << 30) | (32 << 16) | (ord("S") << 8) | 0x2
VMM_ERR_INVALID_LEN = 1
MSG_VERSION = 1
RESPONSE_SIZE = 4000
REPORT_OFFSET = 32
PAGE = 4096
MAX_CERTS_SIZE = 16 * PAGE

Ioctl = Callable[[int, int, bytearray], int]


class _Request(ctypes.Structure):
    _fields_ = [("user_data", ctypes.c_uint8 * 64), ("vmpl", ctypes.c_uint32),
                ("rsvd", ctypes.c_uint8 * 28), ("certs_address", ctypes.c_uint64),
                ("certs_len", ctypes.c_uint32)]


class GuestRequest(ctypes.Structure):
    """struct snp_guest_request_ioctl: the argument of every /dev/sev-guest ioctl."""

    _fields_ = [("msg_version", ctypes.c_uint8), ("req_data", ctypes.c_uint64),
                ("resp_data", ctypes.c_uint64), ("fw_error", ctypes.c_uint32),
                ("vmm_error", ctypes.c_uint32)]


def default_ioctl(fd: int, request: int, arg: bytearray) -> int:
    return int(fcntl.ioctl(fd, request, arg, True))


def open_device(path: str) -> int:
    return os.open(path, os.O_RDWR)


class SevGuestProvider:
    platform = "sev-snp"

    def __init__(self, device: str = DEVICE, *, ioctl: Ioctl = default_ioctl,
                 opener: Callable[[str], int] | None = None) -> None:
        self._device, self._ioctl = device, ioctl
        self._open = opener or open_device
        if opener is None and not os.path.exists(device):
            raise ProviderError(f"{device} does not exist: not an SNP guest")

    def get_report(self, report_data: bytes, *, vmpl: int = 0) -> CpuEvidence:
        if len(report_data) != 64:
            raise ValueError("SNP user_data is exactly 64 bytes")
        fd = self._open(self._device)
        try:
            size = PAGE
            while True:
                result = self._try(fd, report_data, vmpl, size)
                if isinstance(result, CpuEvidence):
                    return result
                if result > MAX_CERTS_SIZE or result <= size:
                    raise ProviderError("the host asks for an implausible certificate buffer")
                size = -(-result // PAGE) * PAGE
        finally:
            os.close(fd)

    def _try(self, fd: int, report_data: bytes, vmpl: int, certs_size: int) -> CpuEvidence | int:
        certs = ctypes.create_string_buffer(certs_size)
        response = ctypes.create_string_buffer(RESPONSE_SIZE)
        req = _Request(vmpl=vmpl, certs_address=ctypes.addressof(certs), certs_len=certs_size)
        ctypes.memmove(req.user_data, report_data, 64)
        guest = GuestRequest(msg_version=MSG_VERSION, req_data=ctypes.addressof(req),
                              resp_data=ctypes.addressof(response))
        arg = bytearray(bytes(guest))
        try:
            self._ioctl(fd, SNP_GET_EXT_REPORT, arg)
        except OSError as exc:
            done = GuestRequest.from_buffer_copy(bytes(arg))
            if done.vmm_error == VMM_ERR_INVALID_LEN:
                return int(_Request.from_address(ctypes.addressof(req)).certs_len)
            raise ProviderError(f"SNP_GET_EXT_REPORT failed (fw_error {done.fw_error}, "
                                f"vmm_error {done.vmm_error})") from exc
        status, report_size = struct.unpack_from("<II", response.raw, 0)
        if status != 0 or report_size > RESPONSE_SIZE - REPORT_OFFSET:
            raise ProviderError(f"the SNP firmware answered status {status}")
        report = response.raw[REPORT_OFFSET:REPORT_OFFSET + report_size]
        return CpuEvidence(self.platform, report, certs.raw)
