"""The data key on SEV-SNP (issue 27): the firmware derives one key per image (launch
measurement and guest policy) and chip, whatever runs in it; Cloister binds it to the
workload digest, so another workload of the same image (another `--admin-public-key`, an
operator's tool) cannot read what the gateway sealed or write rows it accepts. Played
against `FakeSnpFirmware`, a test double answering SNP_GET_DERIVED_KEY as the firmware
would."""

from __future__ import annotations

import ctypes
import hashlib
import os

import pytest

from enclave.errors import DecryptError
from enclave.sealed_state import SNP_GET_DERIVED_KEY, DataKey, _KeyRequest
from gateway.platform_store import PlatformStore, StateInvalid

GATEWAY = hashlib.sha256(b"the production gateway's manifest").digest()
OTHER = hashlib.sha256(b"the same image, another --admin-public-key").digest()


class FakeSnpFirmware:
    """SNP_GET_DERIVED_KEY: a key from the chip's secret and the fields the request
    selects of this image (measurement, policy), as the firmware mixes them; what the
    guest then runs plays no part."""

    def __init__(self, image: bytes = b"measurement|policy") -> None:
        self.chip, self.image = b"chip secret", image

    def __call__(self, fd: int, request: int, arg: bytearray) -> int:
        from attestation.sev_guest import GuestRequest

        assert request == SNP_GET_DERIVED_KEY
        guest = GuestRequest.from_buffer_copy(bytes(arg))
        asked = _KeyRequest.from_address(guest.req_data)
        key = hashlib.sha256(self.chip + self.image
                             + asked.guest_field_select.to_bytes(8, "little")).digest()
        body = b"\x00" * 32 + key  # status 0, reserved, the key
        ctypes.memmove(guest.resp_data, body, len(body))
        return 0


def _key(workload: bytes, firmware: FakeSnpFirmware | None = None) -> DataKey:
    return DataKey.from_snp(workload=workload, ioctl=firmware or FakeSnpFirmware(),
                            device="/dev/null", opener=lambda p: os.open(p, os.O_RDONLY))


def test_another_workload_of_the_same_image_derives_another_key() -> None:
    sealed = _key(GATEWAY).seal(b"a system prompt", purpose="chatbot-prompt:1")
    assert _key(GATEWAY).open(sealed, purpose="chatbot-prompt:1") == b"a system prompt"
    with pytest.raises(DecryptError):
        _key(OTHER).open(sealed, purpose="chatbot-prompt:1")
    assert _key(GATEWAY).mac(b"row") != _key(OTHER).mac(b"row")
    # and another image (firmware key) with the same workload digest: another key too
    with pytest.raises(DecryptError):
        _key(GATEWAY, FakeSnpFirmware(b"another image")).open(sealed,
                                                              purpose="chatbot-prompt:1")


def test_another_workload_cannot_read_the_store_or_write_keys_it_accepts(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'platform.db'}"
    gateway, other = PlatformStore(url, _key(GATEWAY)), PlatformStore(url, _key(OTHER))
    try:
        account = gateway.create_account("team")
        bot = gateway.create_chatbot(account.id, "bot", "m", "the secret prompt", "")
        with pytest.raises(StateInvalid):
            other.get_chatbot(bot.id, account_id=account.id)
        with pytest.raises(StateInvalid):  # it cannot vouch for the account it names
            other.create_api_key(account.id, "forged", budget_tokens=None)
        mine = gateway.get_chatbot(bot.id, account_id=account.id)
        assert mine is not None and mine.system_prompt == "the secret prompt"
    finally:
        gateway.close()
        other.close()


def test_the_local_admin_commands_refuse_a_store_sealed_to_the_workload(tmp_path,
                                                                         capsys) -> None:
    """`cloister apikey create` is another workload: on SEV-SNP it gets no key at all,
    and says what to use instead."""
    from cli.main import main

    assert main(["apikey", "create", "--name", "k", "--data-key", "snp",
                 "--state-dir", str(tmp_path)]) == 2
    assert "cloister admin" in capsys.readouterr().err
