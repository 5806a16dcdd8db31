"""The in-process client (`proxy.transport`): the OpenAI SDK, sync and async, over the
transport in every dialect, with no proxy process; what it refuses, it never passes on.
(Attestation here is `Unverified`, as in the other dialect tests; the integration suite
runs the transport with the real verification against the real engine.)"""

from __future__ import annotations

import httpx
import openai
import pytest

from gateway.app import create_app
from gateway.config import ServeConfig
from proxy.attestor import Unverified
from proxy.dialects import make_client
from proxy.transport import (
    AsyncCloisterTransport,
    CloisterTransport,
    NoReferenceValues,
    openai_client,
)
from testkit.doubles import CHAT_MODEL, EMBEDDING_MODEL, DeterministicTestEngine
from tests.clients import PROTOCOLS, exercise_openai_sdk
from tests.served import served

CHAT = {"model": CHAT_MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def gateway_url():
    with served(create_app(ServeConfig.of(), DeterministicTestEngine().running)) as url:
        yield url


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_the_openai_sdk_over_the_sync_transport(gateway_url, protocol) -> None:
    transport = CloisterTransport(make_client(gateway_url, protocol, attestation=Unverified()))
    with httpx.Client(transport=transport) as http:
        sdk = openai.OpenAI(base_url=f"{gateway_url}/v1", api_key="-", http_client=http)  # type: ignore[arg-type]
        exercise_openai_sdk(sdk, CHAT, EMBEDDING_MODEL)
        assert [m.id for m in sdk.models.list()] == [CHAT_MODEL, EMBEDDING_MODEL]


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_the_openai_sdk_over_the_async_transport(gateway_url, protocol) -> None:
    transport = AsyncCloisterTransport(make_client(gateway_url, protocol,
                                                   attestation=Unverified()))
    async with httpx.AsyncClient(transport=transport) as http:
        sdk = openai.AsyncOpenAI(base_url=f"{gateway_url}/v1", api_key="-", http_client=http)  # type: ignore[arg-type]
        stream = await sdk.chat.completions.create(**CHAT, stream=True)  # type: ignore[call-overload]
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        assert text
        reply = await sdk.chat.completions.create(**{**CHAT, "model": "latest"})  # type: ignore[call-overload]
        assert reply.model == CHAT_MODEL  # `latest` resolved, as the proxy does


def test_an_unreachable_gateway_is_a_stable_error_not_a_crash() -> None:
    transport = CloisterTransport(make_client("http://127.0.0.1:9", "ohttp",
                                              attestation=Unverified()))
    with httpx.Client(transport=transport) as http:
        sdk = openai.OpenAI(base_url="http://127.0.0.1:9/v1", api_key="-", http_client=http,  # type: ignore[arg-type]
                            max_retries=0)
        with pytest.raises(openai.APIStatusError) as refused:
            sdk.chat.completions.create(**CHAT)  # type: ignore[call-overload]
    assert refused.value.status_code == 502
    assert refused.value.body["code"] == "gateway_unreachable"  # type: ignore[index]


def test_it_fails_closed_without_reference_values(tmp_path) -> None:
    with pytest.raises(NoReferenceValues):
        openai_client("http://127.0.0.1:9", state_dir=tmp_path)
