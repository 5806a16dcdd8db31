"""What the client sides of the dialects share to find a gateway's keys (sans-IO): an
answer that must be 200, OHTTP key configurations, the first one a client can use, and
the configurations a report binds under a name."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, cast

from enclave.dialect import ClientDialect, OuterResponse, refusal
from enclave.errors import RequestRefused, UnauthenticatedAnswer
from enclave.ohttp.encapsulation import choose_suite
from enclave.ohttp.keyconfig import KeyConfig, KeyConfigError, decode_key_configs


class StaticKeys:
    """For dialects whose discovered keys are their client side as they are: ready once
    the report vouches for them, and good until a rotation refuses them."""

    def ready(self, candidate: Any) -> ClientDialect:
        return cast(ClientDialect, candidate)  # `candidate` made it, `vouched` checked it

    def expired(self, dialect: ClientDialect) -> bool:
        return False


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
