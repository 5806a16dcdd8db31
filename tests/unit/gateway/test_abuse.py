"""Issue 28: what an unauthenticated sender can do to everyone else, performed against
the gateway (and the local proxy) in process. Each test is the attack; each asserts the
refusal, or that the others are still served."""

from __future__ import annotations

import base64
import json
import os

import httpx
import pytest

from enclave.replay import MemoryReplayCache
from gateway.app import create_app
from gateway.config import ServeConfig
from proxy.errors import GatewayResponseInvalid
from tests.clients import client_for
from tests.unit.conftest import start
from tests.unit.gateway.test_side_channels import _chat, _resend, one_chat_tapped


@pytest.fixture(scope="module")
def pki_module(tmp_path_factory):
    from attestation.simulated import SimulatedPki

    return SimulatedPki.load_or_create(tmp_path_factory.mktemp("pki"))


async def test_a_flood_of_body_less_ehbp_requests_records_nothing(engine) -> None:
    """An EHBP request with no body "opened" under any random encapsulated key and was
    recorded until the key's end: enough of them filled the replay store and every dialect
    answered 503. A body-less request is not a sealed one: nothing is recorded, a POST
    without a body is refused, and a sealed client is served after the flood."""
    cache = MemoryReplayCache(max_entries=64)
    app = create_app(ServeConfig.of(), engine.running, replay_cache=cache)
    async with app.router.lifespan_context(app):
        await start(app)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://gw") as raw:
            answers = [await raw.post("/v1/chat/completions", content=b"", headers={
                "ehbp-encapsulated-key": os.urandom(32).hex(),
                "content-type": "application/json"}) for _ in range(200)]
        assert {a.status_code for a in answers} == {400}
        assert len(cache) == 0
        client = client_for(app, "ohttp")
        try:
            assert (await client.request("POST", "/v1/chat/completions", _chat(2))).status == 200
        finally:
            await client.aclose()
    assert len(engine.seen_bodies) == 1


async def test_an_atoma_request_replayed_with_the_key_s_top_bit_flipped_is_refused(
        engine) -> None:
    """X25519 ignores bit 255 of the client's public key: the captured request with that
    bit flipped opens to the same plaintext, and was a new replay id."""
    async with one_chat_tapped(engine, "atoma") as (app, tap):
        captured = next(r for r in reversed(tap.requests) if r.method == "POST"
                        and "confidential" in r.url.path)
        body = json.loads(captured.content)
        key = bytearray(base64.b64decode(body["client_dh_public_key"]))
        key[31] ^= 0x80
        body["client_dh_public_key"] = base64.b64encode(bytes(key)).decode()
        flipped = httpx.Request(captured.method, captured.url, headers=captured.headers,
                                content=json.dumps(body).encode())
        seen = len(engine.seen_bodies)
        replayed = await _resend(app, flipped)
    assert replayed.status_code == 409
    assert len(engine.seen_bodies) == seen


# --- the local proxy is for this machine's programs, not for web pages ------------------

async def _local(gateway_app, *, host: str = "127.0.0.1:8080"):
    from proxy.app import create_proxy_app

    app = create_proxy_app(client_for(gateway_app))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=f"http://{host}")


CHAT = {"model": "latest", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


async def test_a_web_page_cannot_use_the_local_proxy(gateway_app, engine) -> None:
    """A page on any site can POST `text/plain` to 127.0.0.1 without a preflight, and a
    DNS-rebound name reaches it as the page's own origin: the proxy takes only JSON, from
    no foreign origin, under a loopback name or address."""
    body = json.dumps(CHAT).encode()
    async with await _local(gateway_app) as local:
        simple = await local.post("/v1/chat/completions", content=body,
                                  headers={"content-type": "text/plain"})
        foreign = await local.post("/v1/chat/completions", json=CHAT,
                                   headers={"origin": "https://evil.example"})
        null = await local.post("/v1/chat/completions", json=CHAT, headers={"origin": "null"})
        own = await local.post("/v1/chat/completions", json=CHAT,
                               headers={"origin": "http://127.0.0.1:8080"})
    async with await _local(gateway_app, host="rebound.evil.example:8080") as rebound:
        renamed = await rebound.post("/v1/chat/completions", json=CHAT)
        listed = await rebound.get("/v1/models")
    assert simple.status_code == 415
    assert (foreign.status_code, null.status_code) == (403, 403)
    assert (renamed.status_code, listed.status_code) == (403, 403)
    assert own.status_code == 200
    assert len(engine.seen_bodies) == 1
    async with await _local(gateway_app, host="localhost:8080") as named:
        assert (await named.post("/v1/chat/completions", json=CHAT)).status_code == 200


# --- the keyholder keeps nothing per anonymous caller -----------------------------------

async def test_a_flood_of_anonymous_challenges_locks_no_replica_out(pki_module) -> None:
    """10,000 challenges took every slot for 60 s and each replica's join got 503: a
    challenge is now a MAC the keyholder checks, not a record it keeps."""
    from tests.unit.gateway.test_fleet import KEYHOLDER, REPLICA, SEED, _join, _keyholder, _trust

    trust = _trust(pki_module, KEYHOLDER, REPLICA)
    keyholder = _keyholder(pki_module, trust)
    flood = httpx.ASGITransport(app=keyholder.app(), client=("203.0.113.9", 4000))
    async with httpx.AsyncClient(transport=flood, base_url="http://keyholder") as anonymous:
        for _ in range(10_000):
            assert (await anonymous.post("/v1/keyholder/challenge")).status_code == 200
        junk = [await anonymous.post("/v1/keyholder/release", json={
            "challenge": (await anonymous.post("/v1/keyholder/challenge")).json()["challenge"],
            "evidence": {"format": "nonsense"}}) for _ in range(30)]
    assert {a.status_code for a in junk} >= {429}  # release attempts are limited per address
    assert await _join(pki_module, keyholder, REPLICA, trust) == SEED


# --- one notion of client -----------------------------------------------------------------

def test_made_up_bearer_values_are_one_client_not_ten_thousand() -> None:
    """Each made-up `Authorization: Bearer` value was a client of its own for
    `--max-per-client` and Continuum's per-client secret cap: rotating them escaped both.
    A credential nobody checked names nobody: the client is the address."""
    from enclave.continuum.fields import SecretStore
    from gateway.limits import client_key

    def sender(token: str) -> dict:
        return {"client": ("203.0.113.9", 4000),
                "headers": [(b"authorization", f"Bearer {token}".encode())]}

    assert {client_key(sender(f"fake-{i}")) for i in range(10_000)} == {"203.0.113.9"}
    store = SecretStore(max_secrets=100, per_owner=4)
    honest, _ = store.register(b"h" * 32, owner=client_key({"client": ("198.51.100.1", 1)}))
    for i in range(1_000):
        store.register(os.urandom(32), owner=client_key(sender(f"fake-{i}")))
    assert store.get(honest) == b"h" * 32
    assert len(store) == 5  # the honest secret and the flooder's last four


def test_when_every_client_is_new_the_oldest_secret_goes_first() -> None:
    """Past the global cap (many real clients) the oldest secret goes, whoever owns it:
    no search over all owners per registration."""
    from enclave.continuum.fields import SecretStore

    store = SecretStore(max_secrets=3, per_owner=4)
    ids = [store.register(bytes([i]) * 32, owner=f"10.0.0.{i}")[0] for i in range(5)]
    assert len(store) == 3
    assert store.get(ids[-1]) and store.get(ids[2])
    from enclave.continuum.fields import UnknownSecretError

    with pytest.raises(UnknownSecretError):
        store.get(ids[0])


def test_a_forwarded_address_nobody_trusts_is_said_once() -> None:
    """Behind a balancer without `--forwarded-allow-ips` every client is one: the gateway
    says so the first time a request carries `X-Forwarded-For`, and only then."""
    from structlog.testing import capture_logs

    from gateway.limits import UntrustedForwarding

    forwarded = {"client": ("10.0.0.2", 1), "headers": [(b"x-forwarded-for", b"1.2.3.4")]}
    with capture_logs() as logs:
        UntrustedForwarding(trusted=True).notice(forwarded)
        watch = UntrustedForwarding(trusted=False)
        watch.notice({"client": ("10.0.0.2", 1), "headers": []})
        for _ in range(3):
            watch.notice(forwarded)
    assert [e["event"] for e in logs] == ["forwarded_for_untrusted"]


# --- Atoma's clear body hash confirms no guess -----------------------------------------

async def test_atoma_s_clear_body_hash_confirms_no_guess(engine) -> None:
    """`plaintext_body_hash` travels in the clear: over a deterministic body, hashing
    candidate prompts offline finds the one sent. Our client seals a random field into
    every body (the gateway strips it), so the same prompt never hashes the same."""
    from enclave.atoma.dialect import AtomaClient
    from enclave.atoma.envelope import blake2b_256
    from enclave.dialect import InnerRequest

    async with one_chat_tapped(engine, "atoma") as (_, tap):
        pass
    sent = json.loads(next(r for r in tap.requests if r.method == "POST"
                           and "confidential" in r.url.path).content)
    observed = base64.b64decode(sent["plaintext_body_hash"])
    assert observed != blake2b_256(_chat(2))  # the guess "tell me something" is not confirmed
    node = AtomaClient(os.urandom(32), os.urandom(32))
    hashes = {json.loads(node.seal(InnerRequest("POST", "/v1/chat/completions", _chat(2)),
                                   stream=False)[0].body)["plaintext_body_hash"]
              for _ in range(5)}
    assert len(hashes) == 5
    assert "cloister_blind" not in engine.seen_bodies[-1]  # stripped before the engine


def test_a_large_answer_is_not_sent_at_its_exact_length() -> None:
    """Past 128 KiB the next power of two cost more than the padding bound and answers
    went out at their exact length: now in steps of 64 KiB."""
    from enclave.padding import DEFAULT_PADDING, MAX_PADDING

    sizes = {len(DEFAULT_PADDING.pad_json(b"x" * n)) for n in range(130_000, 400_000, 997)}
    assert all(size % MAX_PADDING == 0 for size in sizes) and len(sizes) == 6


# --- nonce polling starves no client ----------------------------------------------------

async def test_a_sender_polling_fresh_reports_starves_no_proxy(engine, tmp_path) -> None:
    """Behind a balancer nobody named, every client has the balancer's address: one sender
    polling `?nonce=` took every fresh-report token and `cloister proxy` gave up with 502.
    The proxy now verifies in challenge mode by default, which no token limits."""
    from attestation.simulated import SimulatedPki
    from attestation.verify import TrustRoots
    from cli.main import _parser
    from proxy.attestor import Attestor
    from proxy.trust import Trust
    from testkit.attested import simulated

    assert _parser().parse_args(["proxy", "--gateway", "http://gw"]).report_mode == "challenge"
    pki = SimulatedPki.load_or_create(tmp_path)
    app = create_app(ServeConfig.of(), engine.running, attestation=simulated(pki))
    async with app.router.lifespan_context(app):
        await start(app)
        transport = httpx.ASGITransport(app=app, client=("10.0.0.1", 1))  # the balancer
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as poller:
            polled = [(await poller.get("/v1/attestation/report",
                                        params={"nonce": os.urandom(32).hex()})).status_code
                      for _ in range(12)]
        assert 429 in polled
        from testkit.attested import policy

        attestor = Attestor("http://gw", trust=Trust(TrustRoots().with_simulated(
            pki.roots_pem()), policy=policy()), transport=transport, report_mode="challenge")
        try:
            await attestor.verify(lambda claims: True)
        finally:
            await attestor.aclose()
        assert attestor.last is not None


# --- a record lives as long as the key that opened it ------------------------------------

def test_a_request_opened_with_the_look_ahead_key_cannot_be_replayed_after_the_rollover(
        ) -> None:
    """A fleet replica whose clock is behind opens requests under the next epoch's key
    (published by replicas already there). Its record lived until the current key's end
    plus grace; the look-ahead key stays honoured a whole epoch longer, so the captured
    request ran again after the rollover."""
    from enclave.dialect import InnerRequest
    from enclave.keys import FLEET_CLOCK_SKEW, KeyRing
    from enclave.replay import ReplayedRequest, ReplayGuard

    now = [3600.0 * 10 - FLEET_CLOCK_SKEW / 2]  # shortly before this replica's rollover
    ring = KeyRing(rotation_seconds=3600, grace_seconds=300, clock=lambda: now[0],
                   derive=lambda epoch: bytes([epoch % 251 + 1]) * 32)
    look_ahead = (ring.epoch + 1) % 256
    assert ring.lookup(look_ahead) is not None  # accepted now, ahead of its epoch
    guard = ReplayGuard(MemoryReplayCache(), horizon=ring.accepted_until,
                        clock=lambda: now[0])
    captured = InnerRequest("POST", "/v1/chat/completions", b"{}", replay_id=b"enc" * 11)
    guard.check("ohttp", captured)
    now[0] = 3600.0 * 10 + 300 + 60  # past the old key's end and grace
    assert ring.lookup(look_ahead) is not None  # the key that opened it still opens it
    with pytest.raises(ReplayedRequest):
        guard.check("ohttp", captured)


# --- Continuum: every field our client sends is sealed or bound ---------------------------

class RewritingTransport(httpx.AsyncBaseTransport):
    """A MITM between client and gateway that rewrites the clear JSON fields of each
    inference request."""

    def __init__(self, app, changes: dict) -> None:
        self.inner, self.changes = httpx.ASGITransport(app=app), changes

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = b"".join([part async for part in request.stream])  # type: ignore[union-attr]
        if request.method == "POST" and request.url.path == "/v1/chat/completions":
            payload = json.loads(body)
            payload.update(self.changes)
            body = json.dumps(payload).encode()
        headers = {k: v for k, v in request.headers.items() if k != "content-length"}
        return await self.inner.handle_async_request(
            httpx.Request(request.method, request.url, headers=headers, content=body))


@pytest.mark.parametrize("changes", [
    {"max_tokens": 4000}, {"temperature": 2.0}, {"logit_bias": {"50256": 100}},
    {"tool_choice": "required"}, {"stop": ["a"]}, {"response_format": {"type": "json_object"}},
], ids=lambda c: next(iter(c)))
async def test_a_rewritten_continuum_request_is_refused(engine, changes) -> None:
    """Our Continuum client sealed only the prompt: a MITM rewrote the cost, sampling
    and tool fields and the answer was accepted as authentic. Now every field it may seal
    is sealed, the clear ones are bound, and a request that claims this and carries an
    unbound field is refused."""
    app = create_app(ServeConfig.of(), engine.running)
    async with app.router.lifespan_context(app):
        await start(app)
        client = client_for(app, "continuum", transport=RewritingTransport(app, changes))
        try:
            # the gateway's 400 is in the clear (the seed's errors are): the client
            # reports an unauthenticated refusal
            with pytest.raises(GatewayResponseInvalid, match="HTTP 400 invalid_request"):
                await client.request("POST", "/v1/chat/completions", json.dumps({
                    "model": "test-chat", "max_tokens": 3, "temperature": 0.0,
                    "messages": [{"role": "user", "content": "hi"}]}).encode())
        finally:
            await client.aclose()
    assert engine.seen_bodies == []


# --- a conversation belongs to the key that made it ----------------------------------------

async def test_another_key_of_the_account_cannot_read_or_extend_a_conversation(
        tmp_path) -> None:
    """Conversations were scoped to the account: a second key of it (stolen, or minted by
    whoever holds one) continued Alice's conversation and got her messages fed back to it."""
    from enclave.sealed_state import DataKey
    from gateway.platform_store import PlatformStore
    from testkit.doubles import CHAT_MODEL, DeterministicTestEngine
    from tests.unit.gateway.test_platform import _auth, new_key, platform

    store = PlatformStore(f"sqlite:///{tmp_path / 'platform.db'}",
                          DataKey.from_key_file(tmp_path / "data-key"))
    alice, record = new_key(store, "alice")
    mallory, _ = new_key(store, "mallory")  # the same account
    bot = store.create_chatbot(record.account_id, "Support", CHAT_MODEL, "be nice", "")
    engine = DeterministicTestEngine()
    url = f"/api/v1/chatbot/external/{bot.id}/chat"
    async with platform(store, engine) as client:
        mine = (await client.post(url, json={"message": "my secret: 1234"},
                                  headers=_auth(alice))).json()
        stolen = await client.post(url, json={"message": "what did I say?",
                                              "conversation_id": mine["conversation_id"]},
                                   headers=_auth(mallory))
        again = await client.post(url, json={"message": "and now?",
                                             "conversation_id": mine["conversation_id"]},
                                  headers=_auth(alice))
    assert (stolen.status_code, stolen.json()["error"]["code"]) == (404,
                                                                    "conversation_not_found")
    assert all("1234" not in json.dumps(body) for body in engine.seen_bodies
               if any(m.get("content") == "what did I say?" for m in body["messages"]))
    assert again.status_code == 200


# --- a flood of valid sealed requests fills only the flooder's share -------------------

async def _sealed_ohttp(raw: httpx.AsyncClient, config, body: bytes) -> int:
    from enclave.ohttp.bhttp import Request as BinaryRequest
    from enclave.ohttp.bhttp import decode_response, encode_request
    from enclave.ohttp.encapsulation import ClientRequest

    inner = BinaryRequest("POST", "/v1/chat/completions", "https", "cloister",
                          (("content-type", "application/json"),), body)
    sealed = ClientRequest(config, encode_request(inner))
    r = await raw.post("/.well-known/ohttp-gateway", content=sealed.data,
                       headers={"content-type": "message/ohttp-req"})
    if r.headers["content-type"] != "message/ohttp-res":
        return r.status_code
    return decode_response(sealed.open_response(r.content)).status


async def test_a_flood_of_valid_sealed_requests_fills_only_the_flooder_s_share(engine) -> None:
    """Anyone can seal to the published key: ~1,800 undated OHTTP requests a second filled
    the 500,000 records and every dialect answered 503 for up to a day. Records are now
    counted per client; a client over its share sheds its own oldest, and a full store
    sheds from whoever holds the most, never refusing the others."""
    from enclave.ohttp.keyconfig import decode_key_configs

    cache = MemoryReplayCache(max_entries=64)
    app = create_app(ServeConfig.of(), engine.running, replay_cache=cache)
    async with app.router.lifespan_context(app):
        await start(app)
        flood = httpx.ASGITransport(app=app, client=("203.0.113.9", 4000))
        async with httpx.AsyncClient(transport=flood, base_url="http://gw") as flooder:
            config = decode_key_configs(
                (await flooder.get("/.well-known/ohttp-gateway")).content)[0]
            statuses = [await _sealed_ohttp(flooder, config, _chat(1)) for _ in range(150)]
        assert set(statuses) == {200}  # the flooder is served too, at its own expense
        honest = httpx.ASGITransport(app=app, client=("198.51.100.1", 5000))
        async with httpx.AsyncClient(transport=honest, base_url="http://gw") as client:
            assert await _sealed_ohttp(client, config, _chat(1)) == 200
        assert len(cache) <= 64


def test_a_non_canonical_atoma_client_key_is_refused() -> None:
    """Values from p up name the same X25519 point as value - p: refused, so that no
    second spelling of a key makes a captured request new."""
    from enclave.atoma.envelope import X25519_P, canonical_x25519
    from enclave.errors import RequestRefused

    key = os.urandom(32)
    assert canonical_x25519(key) == canonical_x25519(bytes(key[:31]) + bytes([key[31] ^ 0x80]))
    with pytest.raises(RequestRefused):
        canonical_x25519((X25519_P + 1).to_bytes(32, "little"))
    assert canonical_x25519((X25519_P - 1).to_bytes(32, "little")) == (
        X25519_P - 1).to_bytes(32, "little")


async def test_atoma_s_outer_status_says_nothing_about_the_sealed_answer(engine) -> None:
    """The outer status repeated the inner one: an observer learned which sealed requests
    failed (and how). Every sealed answer now goes out as 200, and our client still reads
    the inner status from inside the seal."""
    from tests.unit.gateway.test_side_channels import Wiretap

    app = create_app(ServeConfig.of(), engine.running)
    async with app.router.lifespan_context(app):
        await start(app)
        tap = Wiretap(app)
        client = client_for(app, "atoma", transport=tap)
        try:
            good = await client.request("POST", "/v1/chat/completions", _chat(2))
            bad = await client.request("POST", "/v1/chat/completions", json.dumps(
                {"model": "no-such-model", "messages": []}).encode())
        finally:
            await client.aclose()
    sealed = [status for request, status in zip(tap.requests, tap.statuses, strict=True)
              if request.method == "POST" and "confidential" in request.url.path]
    assert (good.status, bad.status) == (200, 404)
    assert sealed == [200, 200]


# --- a platform key travels only inside the attested TLS ----------------------------------

async def test_atoma_with_accounts_is_not_served_on_the_plain_listener(tmp_path) -> None:
    """Atoma's Bearer key crossed the plain-HTTP public listener, where a MITM or the
    operator's balancer copies it for use on the TLS listener. With accounts, the public
    listener refuses every credential route before reading the key (so nothing answers
    whether a copied key is good), and the attested TLS listener serves it."""
    from enclave.sealed_state import DataKey
    from gateway.platform_store import PlatformStore
    from testkit.doubles import DeterministicTestEngine
    from tests.unit.gateway.test_platform import new_key

    store = PlatformStore(f"sqlite:///{tmp_path / 'platform.db'}",
                          DataKey.from_key_file(tmp_path / "data-key"))
    key, _ = new_key(store, "alice")
    engine = DeterministicTestEngine()
    gateway = create_app(ServeConfig.of(), engine.running, platform_store=store)  # type: ignore[arg-type]
    async with gateway.router.lifespan_context(gateway):
        await start(gateway)
        plain = client_for(gateway, "atoma", api_key=key)
        with pytest.raises(GatewayResponseInvalid, match="403 attested_tls_required"):
            await plain.request("POST", "/v1/chat/completions", _chat(2))
        await plain.aclose()
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=gateway),
                                     base_url="http://gw") as raw:
            lock = await raw.post("/v1/nodes/lock", json={"model": "x"},
                                  headers={"authorization": f"Bearer {key}"})
        tls = client_for(gateway.tls_app, "atoma", api_key=key)
        served = await tls.request("POST", "/v1/chat/completions", _chat(2))
        await tls.aclose()
    assert (lock.status_code, lock.json()["error"]["code"]) == (403, "attested_tls_required")
    assert served.status == 200
    assert len(engine.seen_bodies) == 1


async def test_our_atoma_client_sends_its_key_only_over_the_tls_the_report_binds(
        tmp_path) -> None:
    """Our Atoma client sent the platform key wherever the URL said. It now refuses an
    http:// URL, and over https it sends the key only once the listener's certificate is
    the one the verified report binds: a listener with another certificate (a MITM, the
    operator's balancer) never sees it."""
    from attestation.simulated import SimulatedPki
    from attestation.verify import TrustRoots
    from enclave.sealed_state import DataKey
    from gateway.platform_store import PlatformStore
    from gateway.tls import make_tls_identity
    from proxy.attestor import Attestor
    from proxy.dialects import make_client
    from proxy.errors import CredentialInClear, GatewayNotAttested
    from proxy.trust import Trust
    from testkit.attested import policy, simulated
    from testkit.doubles import DeterministicTestEngine
    from tests.served import served
    from tests.unit.gateway.test_platform import new_key

    pki = SimulatedPki.load_or_create(tmp_path)
    store = PlatformStore(f"sqlite:///{tmp_path / 'platform.db'}",
                          DataKey.from_key_file(tmp_path / "data-key"))
    key, record = new_key(store, "alice")
    bound, other = make_tls_identity(["127.0.0.1"]), make_tls_identity(["127.0.0.1"])
    engine = DeterministicTestEngine()
    app = create_app(ServeConfig.of(), engine.running, attestation=simulated(pki),  # type: ignore[arg-type]
                     platform_store=store, tls_spki_sha256=bound.spki_sha256)
    trust = Trust(TrustRoots().with_simulated(pki.roots_pem()), policy=policy())

    def client(url: str):
        return make_client(url, "atoma", api_key=key, attestation=Attestor(
            url, trust=trust, tls_verify=False, report_mode="challenge"))

    with served(app) as plain_url:
        with pytest.raises(CredentialInClear):
            client(plain_url)
        with served(app.tls_app, tls=other) as impostor:
            fooled = client(impostor)
            with pytest.raises(GatewayNotAttested, match="not the one the report binds"):
                await fooled.request("POST", "/v1/chat/completions", _chat(2))
            await fooled.aclose()
        assert store.get_api_key(record.id).requests == 0
        with served(app.tls_app, tls=bound) as attested:
            honest = client(attested)
            try:
                answer = await honest.request("POST", "/v1/chat/completions", _chat(2))
            finally:
                await honest.aclose()
    assert answer.status == 200
    assert store.get_api_key(record.id).requests == 1


# --- a restart forgets no record a replay could use --------------------------------------

@pytest.mark.parametrize("protocol", ["ehbp", "atoma"])
async def test_a_request_captured_before_a_restart_is_not_answered_after_it(protocol) -> None:
    """A replica of a fleet keeps its keys across a restart (they come from the fleet's
    seed) but not its in-memory records: a request captured before the restart was
    answered again after it. Our clients of every dialect now seal the time they send,
    and a request sent before the gateway started is refused (`stale_request`)."""
    import time

    from enclave.fleet import FleetSecrets
    from testkit.doubles import DeterministicTestEngine
    from tests.unit.gateway.test_side_channels import Wiretap

    fleet = FleetSecrets(bytes(range(32)))
    before = DeterministicTestEngine()
    first = create_app(ServeConfig.of(), before.running, fleet=fleet)  # type: ignore[arg-type]
    async with first.router.lifespan_context(first):
        await start(first)
        tap = Wiretap(first)
        client = client_for(first, protocol, transport=tap)
        try:
            assert (await client.request("POST", "/v1/chat/completions", _chat(2))).status == 200
        finally:
            await client.aclose()
    captured = next(r for r in reversed(tap.requests) if r.method == "POST"
                    and not r.url.path.endswith("/secrets"))
    after = DeterministicTestEngine()
    restarted = create_app(ServeConfig.of(), after.running, fleet=fleet,  # type: ignore[arg-type]
                           clock=lambda: time.time() + 3)
    async with restarted.router.lifespan_context(restarted):
        await start(restarted)
        replayed = await _resend(restarted, captured)
        refused = restarted.metrics.rejected.labels("stale_request")._value.get()
    assert after.seen_bodies == []  # the refusal itself is sealed to the original client
    assert replayed.status_code in (200, 400) and refused == 1


# --- the fleet's shared replay store has per-client shares too ----------------------------

@pytest.fixture(params=["sqlite", "postgresql"])
def replay_db(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'replay.db'}"
    return str(request.getfixturevalue("postgres_url"))


def test_a_flood_into_the_shared_replay_store_fills_only_the_flooder_s_share(
        replay_db) -> None:
    """The fleet's (and `--workers`') replay table had no bound: one address sealing
    valid requests as fast as it could grew it until the database was full, and then every
    dialect answered 503 on every replica. Records are now counted per client there too:
    the flooder sheds its own oldest records, and everyone else's stay."""
    import sqlalchemy as sa

    from gateway.replay_store import SqlReplayCache, replay_records

    store = SqlReplayCache(replay_db, max_per_client=200)
    now = 1_000.0
    assert store.add(b"h" * 32, now + 3600, now, "10.0.0.2")  # an honest client's
    for n in range(1_000):
        assert store.add(n.to_bytes(32, "big"), now + 3600, now, "10.0.0.66")
    with store._engine.connect() as db:  # noqa: SLF001 - the table's size, as stored
        rows = db.execute(sa.select(sa.func.count()).select_from(replay_records)).scalar()
    assert rows <= 201
    assert not store.add(b"h" * 32, now + 3600, now + 1, "10.0.0.2")  # still refused
    assert not store.add((999).to_bytes(32, "big"), now + 3600, now + 1, "10.0.0.66")
    assert store.add((0).to_bytes(32, "big"), now + 3600, now + 1, "10.0.0.66")  # shed
    store.close()
