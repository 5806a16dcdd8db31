"""A fleet behind one address, in process: a keyholder releases the seed only to attested
replicas running an accepted workload, replicas holding the same seed answer each other's
clients, share replay records and platform state."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
from functools import partial
from itertools import cycle
from pathlib import Path

import httpx
import pytest

from attestation.errors import Reason, VerificationError
from attestation.simulated import SimulatedPki
from attestation.statement import generate_key, key_id, public_pem, sign_statement
from attestation.verify import TrustRoots
from attestation.workload import workload_digest
from enclave.fleet import FleetSecrets
from enclave.sealed_state import DataKey
from gateway.app import create_app
from gateway.config import KeyholderConfig, ServeConfig
from gateway.fleet_trust import FleetTrust
from gateway.keyholder import Keyholder
from gateway.platform_store import PlatformStore
from gateway.replay_store import SqlReplayCache
from gateway.workload import build_manifest
from proxy.join import JoinRefused, obtain_seed
from proxy.trust import Trust
from testkit.attested import accepting, simulated, workload
from testkit.doubles import CHAT_MODEL, DeterministicTestEngine
from tests.clients import client_for
from tests.unit.conftest import start
from tests.unit.gateway.test_platform import new_key

RELEASE_KEY = generate_key()
# what every member of the test fleet was started with (its measured trust anchors)
ANCHORS = {"release_key_ids": [key_id(RELEASE_KEY.public_key())], "min_statement_version": 0}
KEYHOLDER = build_manifest([], {**KeyholderConfig.of(attestation="simulated").workload_settings(),
                                **ANCHORS})
REPLICA = workload(**ANCHORS)
SEED = bytes(range(32))


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> SimulatedPki:
    return SimulatedPki.load_or_create(tmp_path_factory.mktemp("pki"))


def _trust(pki, *manifests, key=RELEASE_KEY, min_version: int = 0, version: int = 1,
           valid_until: dt.datetime | None = None) -> FleetTrust:
    """A member's trust: one statement, signed by `key`, accepting `manifests`."""
    values = dataclasses.replace(accepting(), version=version, workloads=frozenset(
        workload_digest(m).hex() for m in manifests))
    if valid_until is not None:
        values = dataclasses.replace(values, valid_until=valid_until)
    return FleetTrust(TrustRoots().with_simulated(pki.roots_pem()),
                      {key_id(key.public_key()): key.public_key()},
                      (sign_statement(values, key),), min_version)


def _keyholder(pki, trust: FleetTrust, manifest=KEYHOLDER, **kw) -> Keyholder:
    return Keyholder(SEED, simulated(pki, manifest), trust=trust, **kw)


async def _join(pki, keyholder: Keyholder, manifest, trust: FleetTrust) -> bytes:
    transport = httpx.ASGITransport(app=keyholder.app())
    client = Trust(trust.roots, policy=trust.policy(dt.datetime.now(dt.UTC)))
    return await obtain_seed(["http://keyholder"], simulated(pki, manifest).prove,
                             trust=client, accept=partial(trust.check_peer, keyholder=True),
                             transport=transport)


async def test_an_attested_replica_of_an_accepted_workload_gets_the_seed(pki) -> None:
    trust = _trust(pki, KEYHOLDER, REPLICA)
    keyholder = _keyholder(pki, trust)
    assert await _join(pki, keyholder, REPLICA, trust) == SEED
    assert keyholder.releases == 1


async def test_a_replica_with_other_settings_is_refused_the_seed(pki) -> None:
    """`--max-tokens` differs: another workload digest, not in the reference values."""
    trust = _trust(pki, KEYHOLDER, REPLICA)
    keyholder = _keyholder(pki, trust)
    with pytest.raises(JoinRefused, match=Reason.WORKLOAD_NOT_ALLOWED.value):
        await _join(pki, keyholder, workload(max_tokens=64, **ANCHORS), trust)
    assert keyholder.releases == 0


async def test_a_keyholder_whose_workload_is_not_accepted_is_not_trusted(pki) -> None:
    replica_view = _trust(pki, REPLICA)  # the replica's values do not name the keyholder
    with pytest.raises(JoinRefused, match=Reason.WORKLOAD_NOT_ALLOWED.value):
        await _join(pki, _keyholder(pki, _trust(pki, KEYHOLDER, REPLICA)), REPLICA,
                    replica_view)


async def test_a_peer_with_other_trust_anchors_is_refused_even_if_a_statement_names_it(
        pki) -> None:
    """The statement names every workload below (a release signed too much, or a digest
    was reused), yet a member whose anchors differ from this one's (another release key,
    another version floor), or a 'keyholder' that is not one, is refused both ways."""
    other_key = {"release_key_ids": [key_id(generate_key().public_key())],
                 "min_statement_version": 0}
    lower_floor = {**ANCHORS, "min_statement_version": 0}
    higher_floor = {**ANCHORS, "min_statement_version": 3}
    rogue_keyholder = build_manifest([], {**KeyholderConfig.of(
        attestation="simulated").workload_settings(), **other_key})
    rogue_replica = workload(**other_key)
    floored_replica = workload(**higher_floor)
    trust = _trust(pki, KEYHOLDER, REPLICA, rogue_keyholder, rogue_replica, floored_replica)
    keyholder = _keyholder(pki, trust)
    for joining in (rogue_replica, floored_replica, rogue_keyholder):
        with pytest.raises(JoinRefused, match=Reason.FLEET_ANCHORS.value):
            await _join(pki, keyholder, joining, trust)
    assert keyholder.releases == 0
    assert lower_floor == ANCHORS and await _join(pki, keyholder, REPLICA, trust) == SEED
    for serving in (rogue_keyholder, REPLICA):  # other anchors; not a keyholder at all
        with pytest.raises(JoinRefused, match=Reason.FLEET_ANCHORS.value):
            await _join(pki, _keyholder(pki, trust, serving), REPLICA, trust)


async def test_statements_are_checked_at_every_release_not_once_at_start(pki) -> None:
    """A statement that vouched at the start expires; from then on the keyholder releases
    nothing, and a statement below the measured version floor never vouches."""
    now = [dt.datetime.now(dt.UTC).timestamp()]
    until = dt.datetime.fromtimestamp(now[0] + 3600, dt.UTC)
    trust = _trust(pki, KEYHOLDER, REPLICA, valid_until=until)
    keyholder = _keyholder(pki, trust, clock=lambda: now[0])
    assert await _join(pki, keyholder, REPLICA, trust) == SEED
    now[0] += 7200
    with pytest.raises(JoinRefused, match=Reason.STATEMENT_EXPIRED.value):
        await _join(pki, keyholder, REPLICA, trust)
    assert keyholder.releases == 1
    floored = dataclasses.replace(_trust(pki, KEYHOLDER, REPLICA, version=2), min_version=3)
    with pytest.raises(VerificationError) as err:
        floored.policy(dt.datetime.now(dt.UTC))
    assert err.value.reason is Reason.STATEMENT_ROLLBACK


def test_a_member_with_an_expired_or_floored_statement_does_not_start(pki, tmp_path) -> None:
    from gateway.fleet_trust import FleetTrustError, fleet_trust

    key_file = tmp_path / "release.pub"
    key_file.write_bytes(public_pem(RELEASE_KEY.public_key()))
    statement = tmp_path / "statement.json"
    statement.write_bytes(_trust(pki, REPLICA, version=2).statements[0])
    config = ServeConfig.of(attestation="simulated", release_key=(key_file,),
                            reference_values=(statement,), min_statement_version=3,
                            state_dir=tmp_path)
    with pytest.raises(FleetTrustError, match="statement_version_rollback"):
        fleet_trust(config.fleet, config.attestation, tmp_path)
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=30)
    with pytest.raises(FleetTrustError, match="statement_expired"):
        fleet_trust(dataclasses.replace(config.fleet, min_statement_version=0),
                    config.attestation, tmp_path, now=later)


async def test_challenges_are_single_use_and_evidence_must_bind_the_recipient(pki) -> None:
    from attestation import evidence
    from enclave import key_release

    keyholder = _keyholder(pki, _trust(pki, KEYHOLDER, REPLICA))
    replica = simulated(pki, REPLICA)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=keyholder.app()),
                                 base_url="http://keyholder") as http:
        challenge = bytes.fromhex((await http.post("/v1/keyholder/challenge")).json()
                                  ["challenge"])
        now = int(dt.datetime.now(dt.UTC).timestamp())
        doc = evidence.collect(replica.cpu, replica.gpu,
                               keys={key_release.RECIPIENT_KEY: b"\x01" * 32},
                               workload=replica.workload, nonce=challenge, expires_at=now + 300,
                               now=now, collateral=replica.collateral)
        swapped = json.loads(doc.to_json())
        swapped["keys"][key_release.RECIPIENT_KEY] = "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI="
        refused = await http.post("/v1/keyholder/release", json={
            "challenge": challenge.hex(), "evidence": swapped})
        reused = await http.post("/v1/keyholder/release", json={
            "challenge": challenge.hex(), "evidence": json.loads(doc.to_json())})
        unknown = await http.post("/v1/keyholder/release", json={
            "challenge": "00" * 32, "evidence": json.loads(doc.to_json())})
    assert (refused.status_code, refused.json()["error"]["code"]) == (403, "join_refused")
    assert any(reason in refused.json()["error"]["message"]  # the keys are in both
               for reason in ("report_data_mismatch", "nonce_mismatch"))
    for answer in (reused, unknown):
        assert (answer.status_code, answer.json()["error"]["code"]) == (400,
                                                                       "unknown_challenge")
    assert keyholder.releases == 0


# --- replicas that share a seed ------------------------------------------------------------


class RoundRobin(httpx.AsyncBaseTransport):
    """A load balancer: each request to the next replica."""

    def __init__(self, *apps) -> None:
        self._next = cycle([httpx.ASGITransport(app=app) for app in apps])

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await next(self._next).handle_async_request(request)


@pytest.fixture
async def started():
    """Starts apps (their lifespans run until the test ends)."""
    async with contextlib.AsyncExitStack() as stack:
        async def start_all(apps) -> None:
            for app in apps:
                await stack.enter_async_context(app.router.lifespan_context(app))
                await start(app)
        yield start_all


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request, tmp_path: Path) -> str:
    """The replicas' shared database: an SQLite file, or a real PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'fleet.db'}"
    return str(request.getfixturevalue("postgres_url"))


def _replicas(count: int, url: str, *, shared_db: bool = True, **kwargs):
    fleet = FleetSecrets(SEED)
    engines = [DeterministicTestEngine() for _ in range(count)]
    apps = [create_app(ServeConfig.of(), e.running, fleet=fleet,
                       replay_cache=SqlReplayCache(url) if shared_db else None,
                       platform_store=PlatformStore(url, DataKey(fleet.derive("data-key"))),
                       **kwargs) for e in engines]
    return apps, engines, url


@pytest.mark.parametrize("protocol", ["ohttp", "ehbp", "atoma"])
async def test_a_request_sealed_to_one_replicas_key_is_answered_by_another(
        database, started, protocol) -> None:
    apps, engines, url = _replicas(2, database)
    # Atoma requests carry a platform API key where the gateway keeps accounts (and only
    # over the attested TLS listener, `tls_app`).
    key, _ = new_key(PlatformStore(url, DataKey(FleetSecrets(SEED).derive("data-key"))), "t")
    await started(apps)
    client = client_for(apps[0], protocol, transport=RoundRobin(*(a.tls_app for a in apps)),
                        api_key=key)
    body = json.dumps({"model": CHAT_MODEL, "max_tokens": 2,
                       "messages": [{"role": "user", "content": "hi"}]}).encode()
    for _ in range(4):  # keys from one replica, requests alternating
        assert (await client.request("POST", "/v1/chat/completions", body)).status == 200
    await client.aclose()
    assert all(engine.seen_bodies for engine in engines)  # both replicas served
    keys = [app.dialects.published_keys() for app in apps]
    assert keys[0] == keys[1]


async def test_a_request_replayed_to_another_replica_is_refused(database, started) -> None:
    from tests.unit.gateway.test_side_channels import Wiretap, _chat, _resend

    apps, engines, _ = _replicas(2, database)
    await started(apps)
    tap = Wiretap(apps[0])
    client = client_for(apps[0], "ehbp", transport=tap)
    assert (await client.request("POST", "/v1/chat/completions", _chat(2))).status == 200
    await client.aclose()
    captured = next(r for r in reversed(tap.requests) if r.method == "POST")
    replayed = await _resend(apps[1], captured)
    assert replayed.status_code == 409
    assert engines[1].seen_bodies == []


async def test_a_conversation_started_on_one_replica_continues_on_another(
        database, started) -> None:
    apps, engines, url = _replicas(2, database)
    store = PlatformStore(url, DataKey(FleetSecrets(SEED).derive("data-key")))
    key, record = new_key(store, "team", budget_tokens=100_000)
    bot = store.create_chatbot(record.account_id, "bot", CHAT_MODEL, "be nice")
    await started(apps)
    tls = [httpx.AsyncClient(transport=httpx.ASGITransport(app=a.tls_app),
                             base_url="https://gw") for a in apps]
    url_chat = f"/api/v1/chatbot/external/{bot.id}/chat"
    auth = {"authorization": f"Bearer {key}"}
    first = (await tls[0].post(url_chat, json={"message": "on A"}, headers=auth)).json()
    second = await tls[1].post(url_chat, headers=auth, json={
        "message": "on B", "conversation_id": first["conversation_id"]})
    listed = await tls[1].get("/api/v1/chatbot/list", headers=auth)
    for client in tls:
        await client.aclose()
    assert second.status_code == 200 and listed.status_code == 200
    sent = engines[1].seen_bodies[-1]["messages"]
    assert [m["content"] for m in sent if m["role"] == "user"] == ["on A", "on B"]


async def test_budgets_hold_across_replicas(database, started) -> None:
    """Twenty requests at once, alternating between two replicas (two processes' worth of
    locks: only the database's row locks keep the reservations atomic)."""
    import asyncio

    apps, engines, url = _replicas(2, database)
    for engine in engines:
        engine.token_delay = 0.005
    store = PlatformStore(url, DataKey(FleetSecrets(SEED).derive("data-key")))
    key, record = new_key(store, "team", budget_tokens=1000)
    await started(apps)
    async with httpx.AsyncClient(transport=RoundRobin(*[a.tls_app for a in apps]),
                                 base_url="https://gw") as client:
        answers = await asyncio.gather(*[client.post(
            "/api/v1/chat/completions", headers={"authorization": f"Bearer {key}"},
            json={"model": CHAT_MODEL, "max_tokens": 100,
                  "messages": [{"role": "user", "content": "a b"}]}) for _ in range(20)])
    served = [a for a in answers if a.status_code == 200]
    assert served and all(a.status_code in (200, 402) for a in answers)
    used = store.get_api_key(record.id)
    assert used.used_tokens == sum(a.json()["usage"]["total_tokens"] for a in served)
    assert used.used_tokens <= 1000 and used.reserved_tokens == 0


async def test_a_keyholder_started_with_the_operators_release_key_gets_no_seed(
        pki, tmp_path) -> None:
    """The attack: the operator starts a genuine keyholder (the release's code) with a
    release key of their own, so that statements they sign (say, accepting a DEBUG guest)
    are believed by it, and has it join the fleet's keyholder for the seed. The release
    keys are measured, so that keyholder is another workload: the fleet's keyholder
    refuses it, and a replica refuses it as its keyholder."""
    from gateway.config import KeyholderConfig
    from gateway.keyholder import keyholder_manifest

    honest, operators = tmp_path / "release.pub", tmp_path / "operator.pub"
    honest.write_bytes(public_pem(RELEASE_KEY.public_key()))
    operators.write_bytes(public_pem(generate_key().public_key()))
    fleets = KeyholderConfig.of(attestation="simulated", release_key=(honest,))
    rogue = KeyholderConfig.of(attestation="simulated", release_key=(operators,),
                               join=("http://keyholder",))
    joining_honestly = KeyholderConfig.of(attestation="simulated", release_key=(honest,),
                                          join=("http://keyholder",))
    trust = _trust(pki, keyholder_manifest(fleets), keyholder_manifest(joining_honestly),
                   REPLICA)
    keyholder = _keyholder(pki, trust, keyholder_manifest(fleets))
    with pytest.raises(JoinRefused, match=Reason.WORKLOAD_NOT_ALLOWED.value):
        await _join(pki, keyholder, keyholder_manifest(rogue), trust)
    assert keyholder.releases == 0
    assert await _join(pki, keyholder, keyholder_manifest(joining_honestly), trust) == SEED
    # and a replica that names the honest values does not take a seed from the rogue one
    rogues = Keyholder(bytes(32), simulated(pki, keyholder_manifest(rogue)), trust=trust)
    with pytest.raises(JoinRefused, match=Reason.WORKLOAD_NOT_ALLOWED.value):
        await _join(pki, rogues, REPLICA, trust)


class _Keyholders(httpx.AsyncBaseTransport):
    """Several keyholders at their own hosts, any of which can be taken down (a killed
    process: the connection is refused)."""

    def __init__(self, apps: dict[str, object]) -> None:
        self._up = {host: httpx.ASGITransport(app=app) for host, app in apps.items()}
        self.down: set[str] = set()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        if host in self.down:
            raise httpx.ConnectError(f"{host}: connection refused", request=request)
        return await self._up[host].handle_async_request(request)


async def _join_any(pki, hosts: list[str], transport: httpx.AsyncBaseTransport, manifest,
                    trust: FleetTrust) -> bytes:
    client = Trust(trust.roots, policy=trust.policy(dt.datetime.now(dt.UTC)))
    return await obtain_seed([f"http://{host}" for host in hosts],
                             simulated(pki, manifest).prove, trust=client,
                             accept=partial(trust.check_peer, keyholder=True),
                             transport=transport)


@pytest.mark.parametrize("killed", ["kh-0", "kh-1", "kh-2"])
async def test_with_any_one_of_three_keyholders_killed_a_replica_still_joins(pki,
                                                                             killed) -> None:
    """Three keyholders share the seed (the second and third joined the first by the
    release protocol, as `cloister keyholder --join` does); a replica names all three and
    gets the seed from whichever answers."""
    trust = _trust(pki, KEYHOLDER, REPLICA)
    first = _keyholder(pki, trust)
    fleet = _Keyholders({"kh-0": first.app()})
    second_seed = await _join_any(pki, ["kh-0"], fleet, KEYHOLDER, trust)
    second = Keyholder(second_seed, simulated(pki, KEYHOLDER), trust=trust)
    third_seed = await _join_any(pki, ["kh-0"], fleet, KEYHOLDER, trust)
    fleet = _Keyholders({"kh-0": first.app(), "kh-1": second.app(),
                         "kh-2": Keyholder(third_seed, simulated(pki, KEYHOLDER),
                                           trust=trust).app()})
    fleet.down.add(killed)
    assert await _join_any(pki, ["kh-0", "kh-1", "kh-2"], fleet, REPLICA, trust) == SEED
    fleet.down |= {"kh-0", "kh-1", "kh-2"}
    with pytest.raises(JoinRefused, match="kh-2: cannot fetch the attestation report"):
        await _join_any(pki, ["kh-0", "kh-1", "kh-2"], fleet, REPLICA, trust)


def _two_statement_trust(pki, soon: dt.datetime, later: dt.datetime) -> FleetTrust:
    """A keyholder's trust in two statements accepting the fleet, one expiring first."""
    envelopes = []
    for version, until in ((1, soon), (2, later)):
        values = dataclasses.replace(accepting(), version=version, valid_until=until,
                                     workloads=frozenset(workload_digest(m).hex()
                                                         for m in (KEYHOLDER, REPLICA)))
        envelopes.append(sign_statement(values, RELEASE_KEY))
    return FleetTrust(TrustRoots().with_simulated(pki.roots_pem()),
                      {key_id(RELEASE_KEY.public_key()): RELEASE_KEY.public_key()},
                      tuple(envelopes))


async def test_every_release_and_policy_is_logged_and_the_policy_rebuilds(pki,
                                                                          tmp_path) -> None:
    """The audit log says who got the seed under which statements, and the statements in
    force at any moment come back from the log alone; its checkpoint is signed by the key
    the keyholder's report binds, and every entry is in the signed tree."""
    from enclave.tlog.merkle import leaf_hash, verify_inclusion
    from enclave.tlog.note import Checkpoint, Note, NoteKey
    from gateway.keyholder_audit import open_audit, policy_at, read
    from gateway.tlog import BOUND_KEY

    now = dt.datetime.now(dt.UTC)
    trust = _two_statement_trust(pki, now + dt.timedelta(seconds=100),
                                 now + dt.timedelta(days=1))
    audit = open_audit(None, tmp_path, SEED, trust.statements)
    shift = [0.0]
    keyholder = Keyholder(SEED, simulated(pki, KEYHOLDER), trust=trust, audit=audit,
                          clock=lambda: now.timestamp() + shift[0])
    assert await _join(pki, keyholder, REPLICA, trust) == SEED  # both statements in force
    assert await _join(pki, keyholder, REPLICA, trust) == SEED  # the same policy
    shift[0] = 200.0  # the first statement has expired
    assert await _join(pki, keyholder, REPLICA, trust) == SEED
    audit.log.turn()
    audit.log.sign(now.timestamp())

    entries = audit.log.store.entries(0)
    policies, releases = read(entries)
    assert len(policies) == 2 and len(releases) == 3  # a policy entry only on a change
    assert {r.workload for r in releases} == {workload_digest(REPLICA).hex()}
    assert releases[0].policy == releases[1].policy != releases[2].policy
    assert policy_at(entries, now.timestamp() + 50) == list(trust.statements)
    assert policy_at(entries, now.timestamp() + 250) == [trust.statements[1]]
    with pytest.raises(LookupError):
        policy_at(entries, now.timestamp() - 10)
    assert all(SEED not in entry for entry in entries)

    bound = keyholder.reports.bound_keys()[BOUND_KEY]
    note = Note.parse(audit.log.checkpoint or b"")
    note.verify(NoteKey(audit.log.origin, bound))
    checkpoint = Checkpoint.parse(note.text)
    for index, entry in enumerate(entries):
        verify_inclusion(index, checkpoint.size, leaf_hash(entry),
                         audit.log.inclusion(leaf_hash(entry), checkpoint.size)[1],
                         checkpoint.root)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=keyholder.app()),
                                 base_url="http://keyholder") as http:
        served = await http.get("/v1/log/checkpoint")
    assert served.status_code == 200 and served.content == audit.log.checkpoint
