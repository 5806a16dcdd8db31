"""The client sends its user's routing hint beside the ciphertext in every dialect; the
gateway answers whatever the header says (it never reads it)."""

from __future__ import annotations

import json
import stat

import httpx
import pytest

from enclave.route_hint import HEADER, RouteHint, user_key
from proxy.attestor import Unverified
from proxy.dialects import make_client, route_hint_for
from tests.clients import PROTOCOLS

CHAT = {"model": "test-chat", "max_tokens": 4,
        "messages": [{"role": "system", "content": "You are terse."},
                     {"role": "user", "content": "hello"}]}


class Recording(httpx.AsyncBaseTransport):
    """An in-process transport that records the headers of what it carries and can
    overwrite the hint (what a hostile client could send)."""

    def __init__(self, app, *, forged_hint: str | None = None) -> None:
        self._inner = httpx.ASGITransport(app=app)
        self.hints: list[str | None] = []
        self.paths: list[str] = []
        self._forged = forged_hint

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._forged is not None and request.method == "POST":
            request.headers[HEADER] = self._forged
        self.hints.append(request.headers.get(HEADER))
        self.paths.append(request.url.path)
        return await self._inner.handle_async_request(request)


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_every_dialect_carries_the_users_hint_in_the_clear(gateway_app,
                                                                 protocol) -> None:
    hint = RouteHint(user_key(b"sk-someone"))
    body = json.dumps(CHAT).encode()
    recording = Recording(gateway_app)
    client = make_client("http://gw", protocol, attestation=Unverified(),
                         transport=recording, route_hint=hint)
    answer = await client.request("POST", "/v1/chat/completions", body)
    async with client.stream("POST", "/v1/chat/completions", body) as stream:
        chunks = [chunk async for chunk in stream.chunks()]
    await client.aclose()
    assert answer.status == 200 and chunks
    # computed over the request as written, not as padded and sealed: equal for both; a
    # registration (Continuum's secret) carries the hint of the request that caused it,
    # so a balancer hashing on it takes both to one replica
    expected = hint.hint("/v1/chat/completions", body)
    sent = [(p, h) for p, h in zip(recording.paths, recording.hints, strict=True) if h]
    assert [h for _, h in sent] == [expected] * len(sent)
    assert len([p for p, _ in sent if p != "/v1/secrets"]) == 2  # the chat, whole and streamed
    if protocol == "continuum":
        assert ("/v1/secrets", expected) in sent


@pytest.mark.parametrize("forged", ["", "not a hint", "x" * 5000, "\u00e9t\u00e9"])
async def test_a_malformed_hint_changes_nothing_at_the_gateway(gateway_app, forged) -> None:
    recording = Recording(gateway_app, forged_hint=forged)
    client = make_client("http://gw", "ohttp", attestation=Unverified(), transport=recording)
    answer = await client.request("POST", "/v1/chat/completions", json.dumps(CHAT).encode())
    await client.aclose()
    assert answer.status == 200
    assert recording.hints[-1] == forged


def test_hints_are_on_by_default_only_where_a_prefix_cache_is_shared(tmp_path) -> None:
    """Anonymous OHTTP and EHBP requests share no cache (each gets a salt of its own), so
    a hint would only make them linkable; a Continuum client keeps one secret, whose
    requests share one tenant's cache."""
    for protocol in ("ohttp", "ehbp", "atoma"):
        assert route_hint_for("auto", protocol, tmp_path) is None
    assert route_hint_for("off", "continuum", tmp_path) is None
    body = json.dumps(CHAT).encode()
    kept = route_hint_for("auto", "continuum", tmp_path)
    again = route_hint_for("on", "ohttp", tmp_path)
    assert kept is not None and again is not None
    assert kept.hint("/p", body) == again.hint("/p", body)  # one user, one key
    assert stat.S_IMODE((tmp_path / "route-hint.key").stat().st_mode) == 0o600
    from_key = route_hint_for("on", "atoma", tmp_path, api_key="sk-key")
    assert from_key is not None
    assert from_key.hint("/p", body) == RouteHint(user_key(b"sk-key")).hint("/p", body)
    assert from_key.hint("/p", body) != kept.hint("/p", body)
    with pytest.raises(ValueError, match="route-hint"):
        route_hint_for("sometimes", "ohttp", tmp_path)
