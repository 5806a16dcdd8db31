"""What the client sides of the dialects share to find a gateway's keys (sans-IO): an
answer that must be 200, OHTTP key configurations, the first one a client can use, and
the configurations a report binds under a name."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from enclave.dialect import OuterResponse, refusal
from enclave.errors import RequestRefused, UnauthenticatedAnswer
from enclave.ohttp.encapsulation import choose_suite
from enclave.ohttp.keyconfig import KeyConfig, KeyConfigError, decode_key_configs


def answered(response: OuterResponse) -> bytes:
    """The body of a 200 answer; what any other answer means, refused."""
    if response.status != 200:
        raise refusal(response)
    return response.body


def key_configs(body: bytes) -> list[KeyConfig]:
    try:
        return decode_key_configs(body)
    except KeyConfigError as exc:
        raise UnauthenticatedAnswer("malformed key configuration") from exc


def usable(config: KeyConfig) -> bool:
    try:
        choose_suite(config)
    except RequestRefused:
        return False
    return True


def first(configs: list[KeyConfig], ok: Callable[[KeyConfig], bool] = usable) -> KeyConfig:
    for config in configs:
        if ok(config):
            return config
    raise UnauthenticatedAnswer("the gateway offers no usable key configuration")


def bound_configs(bound: Mapping[str, bytes], name: str) -> list[KeyConfig]:
    try:
        return decode_key_configs(bound.get(name, b""))
    except KeyConfigError:
        return []
