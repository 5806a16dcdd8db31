"""Length and replay, attacked from the wire: what an observer sees of answers of 1 to 64
tokens in every dialect, and what a captured request does when it is sent again."""

from __future__ import annotations

import contextlib
import email.utils
import json
import time

import httpx
import pytest

from enclave.dialect import InnerRequest
from enclave.ohttp.bhttp import Request as BinaryRequest
from enclave.ohttp.bhttp import decode_response, encode_request
from enclave.ohttp.encapsulation import ClientRequest
from enclave.ohttp.keyconfig import decode_key_configs
from enclave.padding import PaddingPolicy, strip_events
from enclave.replay import MemoryReplayCache, ReplayCacheFull, ReplayedRequest, ReplayGuard
from gateway.app import create_app
from gateway.config import ServeConfig
from testkit.doubles import CHAT_MODEL
from tests.clients import PROTOCOLS, client_for
from tests.unit.conftest import start

TOKEN_COUNTS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)


class Wiretap(httpx.AsyncBaseTransport):
    """Between client and gateway: what an observer of the wire sees (every request as
    sent, and the size of each piece of each answer as the gateway wrote it)."""

    def __init__(self, app) -> None:
        self.inner = httpx.ASGITransport(app=self._recording(app))
        self.requests: list[httpx.Request] = []
        self.statuses: list[int] = []  # of each answer, in the order of `requests`
        self.answer_headers: list[httpx.Headers] = []
        self.parts: list[list[int]] = []

    def _recording(self, app):
        async def recorded(scope, receive, send):
            sizes: list[int] = []
            if scope["type"] == "http":
                self.parts.append(sizes)

            async def record(message):
                if message["type"] == "http.response.body" and message.get("body"):
                    sizes.append(len(message["body"]))
                await send(message)

            await app(scope, receive, record)
        return recorded

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = b"".join([part async for part in request.stream])  # type: ignore[union-attr]
        request = httpx.Request(request.method, request.url, headers=request.headers,
                                content=body)
        self.requests.append(request)
        answer = await self.inner.handle_async_request(request)
        self.statuses.append(answer.status_code)
        self.answer_headers.append(answer.headers)
        return answer


@contextlib.asynccontextmanager
async def one_chat_tapped(engine, protocol: str):
    """A running gateway that answered one chat in `protocol`, and the wire tap that saw
    it (its app stays up inside the block, for a request sent again)."""
    app = create_app(ServeConfig.of(), engine.running)
    async with app.router.lifespan_context(app):
        await start(app)
        tap = Wiretap(app)
        client = client_for(app, protocol, transport=tap)
        assert (await client.request("POST", "/v1/chat/completions", _chat(2))).status == 200
        await client.aclose()
        yield app, tap


def _chat(tokens: int, *, stream: bool = False) -> bytes:
    return json.dumps({"model": CHAT_MODEL, "max_tokens": tokens, "stream": stream,
                       "messages": [{"role": "user", "content": "tell me something"}]}
                      ).encode()


async def _sizes(engine, protocol: str, padding: str, *, stream: bool) -> list[list[int]]:
    app = create_app(ServeConfig.of(padding=PaddingPolicy.parse(padding)), engine.running)
    async with app.router.lifespan_context(app):
        await start(app)
        tap = Wiretap(app)
        client = client_for(app, protocol, transport=tap)
        for tokens in TOKEN_COUNTS:
            if stream:
                async with client.stream("POST", "/v1/chat/completions",
                                         _chat(tokens, stream=True)) as s:
                    assert s.status == 200
                    assert b"[DONE]" in b"".join([c async for c in s.chunks()])
            else:
                answer = await client.request("POST", "/v1/chat/completions", _chat(tokens))
                assert answer.status == 200 and answer.body.endswith(b"}")  # unpadded
        await client.aclose()
    inference = [i for i, r in enumerate(tap.requests)
                 if r.method == "POST" and not r.url.path.endswith("/secrets")]
    assert len(inference) == len(TOKEN_COUNTS)
    return [tap.parts[i] for i in inference]


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_whole_answers_of_1_to_64_tokens_fall_in_a_few_sizes(engine, protocol) -> None:
    padded = {sum(parts) for parts in await _sizes(engine, protocol, "pow2:256", stream=False)}
    plain = {sum(parts) for parts in await _sizes(engine, protocol, "off", stream=False)}
    assert len(plain) >= 8, plain  # without padding the length gives the token count away
    assert len(padded) <= 3, sorted(padded)


def _buckets(sizes: set[int]) -> set[int]:
    """The sizes less the dialect's constant framing (what the smallest is over a power
    of two): all powers of two if each chunk was padded to a pow2 bucket."""
    smallest = min(sizes)
    overhead = smallest - (1 << (smallest.bit_length() - 1))
    return {_bucket(size - overhead) for size in sizes}


def _bucket(size: int) -> int:
    """A framed size back to its bucket: a chunk's length prefix on the wire (OHTTP's
    varint) grows from 2 to 4 bytes past 16 KiB, so a 16 KiB bucket shows 2 bytes more."""
    return size - 2 if size > 1 << 14 and (size - 2) & (size - 3) == 0 else size


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_every_streamed_chunk_is_a_bucket_on_the_wire(engine, protocol) -> None:
    engine.token_delay = 0.002  # tokens one by one, as a real engine sends them
    answers = await _sizes(engine, protocol, "pow2:256", stream=True)
    if protocol in ("ohttp", "ehbp"):  # the end of stream (OHTTP's final chunk, EHBP's
        # receipt frame) is a frame of its own, of one size
        assert len({parts[-1] for parts in answers}) == 1
        answers = [parts[:-1] for parts in answers]
    chunks = {size for parts in answers for size in parts[1:]}
    assert all(b >= 256 and b & (b - 1) == 0 for b in _buckets(chunks)), sorted(chunks)
    plain = {size for parts in await _sizes(engine, protocol, "off", stream=True)
             for size in parts[1:]}
    assert not all(b & (b - 1) == 0 for b in _buckets(plain))  # unpadded, they are not


def test_padding_policies() -> None:
    pow2, fixed = PaddingPolicy.parse("pow2:256"), PaddingPolicy.parse("fixed:256")
    assert [pow2.target(n) for n in (0, 256, 257, 700)] == [256, 256, 512, 1024]
    assert [fixed.target(n) for n in (1, 256, 257, 700)] == [256, 256, 512, 768]
    assert PaddingPolicy.parse("off").pad_json(b"{}") == b"{}"
    padded = pow2.pad_events(b"data: {}\n\n")
    assert len(padded) == 256 and strip_events(padded) == b"data: {}\n\n"
    assert json.loads(pow2.pad_json(b'{"a": 1}')) == {"a": 1}
    for bad in ("pow2", "pow2:8", "fixed:1000000", "squares:16", "pow2:-1"):
        with pytest.raises(ValueError):
            PaddingPolicy.parse(bad)


# --- replays --------------------------------------------------------------------------


async def _resend(app, request: httpx.Request) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://gw") as raw:
        return await raw.request(request.method, request.url.path, content=request.content,
                                 headers={k: v for k, v in request.headers.items()
                                          if k not in ("content-length", "host")})


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("stream", [False, True])
async def test_a_captured_request_sent_again_is_refused_before_the_engine(
        engine, protocol, stream) -> None:
    app = create_app(ServeConfig.of(), engine.running)
    async with app.router.lifespan_context(app):
        await start(app)
        tap = Wiretap(app)
        client = client_for(app, protocol, transport=tap)
        if stream:
            async with client.stream("POST", "/v1/chat/completions", _chat(3, stream=True)) as s:
                assert s.status == 200
                _ = [c async for c in s.chunks()]
        else:
            assert (await client.request("POST", "/v1/chat/completions", _chat(3))).status == 200
        captured = next(r for r in reversed(tap.requests) if r.method == "POST"
                        and not r.url.path.endswith("/secrets"))
        seen = len(engine.seen_bodies)
        replayed = await _resend(app, captured)
        await client.aclose()
    assert len(engine.seen_bodies) == seen  # nothing reached the engine twice
    if protocol != "ohttp":  # OHTTP's outer status is always 200: the 409 is sealed
        assert replayed.status_code == 409


async def _ohttp_with_date(app, date: str) -> int:
    """The inner status of an OHTTP request carrying `date` (opened as its sender)."""
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://gw") as raw:
        config = decode_key_configs((await raw.get("/.well-known/ohttp-gateway")).content)[0]
        inner = BinaryRequest("POST", "/v1/chat/completions", "https", "cloister",
                              (("date", date), ("content-type", "application/json")),
                              _chat(2))
        sealed = ClientRequest(config, encode_request(inner))
        r = await raw.post("/.well-known/ohttp-gateway", content=sealed.data,
                           headers={"content-type": "message/ohttp-req"})
        if r.headers["content-type"] != "message/ohttp-res":
            return r.status_code  # refused before it opened: in the clear
        return decode_response(sealed.open_response(r.content)).status


@pytest.mark.parametrize("offset", [-3600, 600])
async def test_an_ohttp_request_dated_outside_the_window_is_stale(engine, offset) -> None:
    app = create_app(ServeConfig.of(), engine.running)
    async with app.router.lifespan_context(app):
        await start(app)
        stale = await _ohttp_with_date(app, email.utils.formatdate(time.time() + offset,
                                                                   usegmt=True))
        fresh = await _ohttp_with_date(app, email.utils.formatdate(usegmt=True))
        garbage = await _ohttp_with_date(app, "yesterday at noon")
    assert (stale, fresh, garbage) == (400, 200, 400)
    assert len(engine.seen_bodies) == 1  # only the fresh one


def test_the_replay_store_is_bounded_and_sheds_the_greediest_client_s_own() -> None:
    """Bounded: a client past its share (a quarter) sheds its own oldest record; a full
    store sheds the oldest of whoever holds the most; expired records go first."""
    now = [1000.0]
    cache = MemoryReplayCache(max_entries=8)
    guard = ReplayGuard(cache, horizon=lambda: now[0] + 100, window=10,
                        clock=lambda: now[0])
    guard.check("ohttp", InnerRequest("POST", "/", replay_id=b"a"), "honest")
    guard.check("ehbp", InnerRequest("POST", "/", replay_id=b"a"), "honest")  # another dialect's
    for i in range(10):
        guard.check("ohttp", InnerRequest("POST", "/", replay_id=b"f%d" % i), "flooder")
    assert len(cache) == 4  # the honest client's two, the flooder's last two
    with pytest.raises(ReplayedRequest):
        guard.check("ohttp", InnerRequest("POST", "/", replay_id=b"a"), "honest")
    with pytest.raises(ReplayedRequest):
        guard.check("ohttp", InnerRequest("POST", "/", replay_id=b"f9"), "flooder")
    guard.check("ohttp", InnerRequest("POST", "/", replay_id=b"f0"), "flooder")  # shed: its own
    for client in "bcdef":
        guard.check("ohttp", InnerRequest("POST", "/", replay_id=client.encode()), client)
    assert len(cache) == 8  # full: it shed from the greediest, never refused anyone
    now[0] += 101  # every record has outlived every key that could open its request
    guard.check("ohttp", InnerRequest("POST", "/", replay_id=b"a"), "honest")
    assert len(cache) == 1


def test_a_store_of_one_signer_s_records_refuses_when_full_and_forgets_nothing() -> None:
    """The admin API's signatures are one client's: shedding would forget a signature
    still valid (a replay); that store keeps no share and refuses when full."""
    cache = MemoryReplayCache(max_entries=2, share=None)
    assert cache.add(b"a", 100, 0) and cache.add(b"b", 100, 0)
    with pytest.raises(ReplayCacheFull):
        cache.add(b"c", 100, 0)
    assert not cache.add(b"a", 100, 1)  # still remembered
    assert cache.add(b"c", 200, 100)  # once the others expired


# --- prefix-cache isolation -----------------------------------------------------------


async def test_a_client_supplied_cache_salt_is_refused(plaintext_client, engine) -> None:
    body = json.loads(_chat(2))
    r = await plaintext_client.post("/v1/chat/completions", json={**body, "cache_salt": "x"})
    assert (r.status_code, r.json()["error"]["code"]) == (400, "cache_salt_not_allowed")
    assert engine.seen_bodies == []


async def test_the_gateway_salts_each_tenant_apart(engine) -> None:
    """One Continuum secret is one tenant; OHTTP requests have no stable tenant, so each
    gets a salt of its own; embeddings are not salted."""
    app = create_app(ServeConfig.of(), engine.running)
    async with app.router.lifespan_context(app):
        await start(app)
        first, second = client_for(app, "continuum"), client_for(app, "continuum")
        ohttp = client_for(app, "ohttp")
        for client in (first, first, second, ohttp, ohttp):
            assert (await client.request("POST", "/v1/chat/completions", _chat(2))).status == 200
        embed = json.dumps({"model": "test-embed", "input": "hi"}).encode()
        assert (await ohttp.request("POST", "/v1/embeddings", embed)).status == 200
        for client in (first, second, ohttp):
            await client.aclose()
    salts = [body.get("cache_salt") for body in engine.seen_bodies]
    assert salts[0] == salts[1]  # the same tenant shares its prefix cache
    assert len({salts[1], salts[2], salts[3], salts[4]}) == 4  # nobody else does
    assert salts[5] is None


# --- post-quantum secret exchange -------------------------------------------------------


async def test_the_continuum_secret_is_exchanged_over_the_hybrid_kem(engine) -> None:
    async with one_chat_tapped(engine, "continuum") as (_, tap):
        pass
    registration = next(r for r in tap.requests if r.url.path == "/v1/secrets")
    sealed = json.loads(registration.content)
    assert sealed["kem"] == "MLKEM768-X25519"
    assert len(bytes.fromhex(sealed["ciphertext"])) == 1120 + 32 + 16  # enc, secret, tag


async def test_a_hidden_hybrid_key_is_no_downgrade(engine) -> None:
    """Someone between the client and the gateway answers 404 for the hybrid key: the
    client falls back to the classic key, sees that the report attests a hybrid one, and
    refuses to go on."""
    from attestation.simulated import SimulatedPki
    from proxy.attestor import Attestor
    from proxy.dialects import make_client
    from proxy.errors import GatewayNotAttested
    from testkit.attested import simulated, trusting

    pki = SimulatedPki.generate()

    class HidingTheHybridKey(httpx.AsyncBaseTransport):
        def __init__(self, app) -> None:
            self.inner = httpx.ASGITransport(app=app)

        async def handle_async_request(self, request):
            if request.url.path == "/v1/secrets/key":
                return httpx.Response(404)
            return await self.inner.handle_async_request(request)

    app = create_app(ServeConfig.of(), engine.running, attestation=simulated(pki))
    async with app.router.lifespan_context(app):
        await start(app)
        transport = HidingTheHybridKey(app)
        client = make_client("http://gw", "continuum", transport=transport,
                             attestation=Attestor("http://gw", trust=trusting(pki),
                                                  transport=transport))
        with pytest.raises(GatewayNotAttested):
            await client.request("POST", "/v1/chat/completions", _chat(2))
        await client.aclose()
    assert engine.seen_bodies == []


@pytest.mark.slow  # 34 streams per dialect
@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_streamed_answers_of_1_to_34_tokens_use_at_most_4_chunk_sizes(
        engine, protocol) -> None:
    """Coalesced chunks carry several tokens: each padded to the next power of two, they
    took 5 to 7 sizes across answers of 1 to 34 tokens, which tells how many tokens each
    chunk held. Streamed chunks now grow by fourfold steps: at most 4 sizes on the wire,
    whatever the engine's pace (one token per chunk, or all of them in one)."""
    import tests.unit.gateway.test_side_channels as here

    counts, sizes = here.TOKEN_COUNTS, set()
    here.TOKEN_COUNTS = tuple(range(1, 35))
    try:
        for delay in (0.0003, 0.004):
            engine.token_delay = delay
            answers = await _sizes(engine, protocol, "pow2:256", stream=True)
            if protocol in ("ohttp", "ehbp"):  # the end of stream (OHTTP's final chunk,
                # EHBP's receipt frame) is a frame of its own, one size
                assert len({parts[-1] for parts in answers}) == 1
                answers = [parts[:-1] for parts in answers]
            sizes |= {size for parts in answers for size in parts[1:]}
    finally:
        here.TOKEN_COUNTS = counts
    assert len(sizes) <= 4, sorted(sizes)


@pytest.mark.parametrize("events", [1, 200, 253, 254, 1000, 4000, 16000, 16380, 16382])
def test_a_padded_ohttp_chunk_is_exactly_its_bucket_whatever_its_length_prefix(events) -> None:
    """The chunk's plaintext (varint length + events) fills the bucket exactly, at every
    size class of the varint (found by the streamed-chunk test when a chunk reached the
    16 KiB bucket: the framing was taken as 4 bytes where it is 2)."""
    from enclave.ohttp.bhttp import encode_content_chunk
    from enclave.ohttp.dialect import _ChunkedResponder

    policy = PaddingPolicy.parse("pow2:256")
    padded = policy.pad_events(b"x" * events, framing=_ChunkedResponder.chunk_framing)
    framed = len(encode_content_chunk(padded))
    assert framed & (framed - 1) == 0 and framed >= 256, framed
