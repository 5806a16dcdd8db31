"""A client that fails closed (issue 13): a gateway is trusted only when its report
verifies and matches a release statement signed by a trusted key (or a local policy),
unexpired and not rolled back; statements are remembered and new ones announced."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json

import httpx
import pytest

from attestation.simulated import SimulatedPki
from attestation.statement import generate_key, key_id, public_pem, sign_statement
from attestation.verify import TrustRoots
from cli.main import main
from gateway.app import create_app
from gateway.config import ServeConfig
from proxy.attestor import Attestor
from proxy.errors import GatewayNotAttested
from proxy.trust import StatementLog, Trust, load_trust
from testkit.attested import accepting, simulated
from testkit.doubles import DeterministicTestEngine
from tests.unit.conftest import start


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> SimulatedPki:
    return SimulatedPki.load_or_create(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def release_key():
    return generate_key()


def _statement(key, **changes) -> bytes:
    return sign_statement(dataclasses.replace(accepting(), **changes), key)


@contextlib.asynccontextmanager
async def _gateway(pki, *statements: bytes):
    attested = dataclasses.replace(simulated(pki), statements=statements)
    app = create_app(ServeConfig.of(), DeterministicTestEngine().running, attestation=attested)
    async with app.router.lifespan_context(app):
        await start(app)
        yield httpx.ASGITransport(app=app)


def _trust(pki, *keys) -> Trust:
    return Trust(TrustRoots().with_simulated(pki.roots_pem()),
                 {key_id(k.public_key()): k.public_key() for k in keys})


async def _verify(transport, trust, log, *, url: str = "http://gw") -> Attestor:
    attestor = Attestor(url, trust=trust, statements=log, transport=transport)
    try:
        await attestor.verify(lambda claims: True)
    finally:
        await attestor.aclose()
    return attestor


async def test_a_statement_signed_by_a_trusted_key_is_accepted_and_remembered(
        pki, release_key, tmp_path) -> None:
    log = StatementLog(tmp_path)
    async with _gateway(pki, _statement(release_key)) as transport:
        first = await _verify(transport, _trust(pki, release_key), log)
        again = await _verify(transport, _trust(pki, release_key), log)
    assert first.new_statement and not again.new_statement
    assert first.last_statement is not None and first.last is not None
    assert first.last.accepted is first.last_statement.values
    lines = (tmp_path / "accepted-statements.log").read_text().splitlines()
    assert len(lines) == 1 and first.last_statement.digest in lines[0]


@pytest.mark.parametrize(("serve", "reason"), [
    ("untrusted", "statement_signed_by_untrusted_key"),
    ("expired", "statement_expired"),
    ("other_workload", "workload_not_allowed"),
    ("nothing", "no_reference_values"),
])
async def test_statements_that_do_not_vouch_are_refused(pki, release_key, tmp_path, serve,
                                                       reason) -> None:
    past = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=5)
    statements = {
        "untrusted": (_statement(generate_key()),),
        "expired": (_statement(release_key, valid_until=past),),
        "other_workload": (_statement(release_key, workloads=frozenset({"00" * 32})),),
        "nothing": (),
    }[serve]
    async with _gateway(pki, *statements) as transport:
        with pytest.raises(GatewayNotAttested, match=reason):
            await _verify(transport, _trust(pki, release_key), StatementLog(tmp_path))


async def test_a_lower_version_after_a_higher_one_is_a_rollback(pki, release_key,
                                                                tmp_path) -> None:
    log = StatementLog(tmp_path)
    async with _gateway(pki, _statement(release_key, version=5)) as transport:
        await _verify(transport, _trust(pki, release_key), log)
    async with _gateway(pki, _statement(release_key, version=4)) as transport:
        with pytest.raises(GatewayNotAttested, match="statement_version_rollback"):
            await _verify(transport, _trust(pki, release_key), log)
    async with _gateway(pki, _statement(release_key, version=6)) as transport:
        assert (await _verify(transport, _trust(pki, release_key), log)).new_statement


@pytest.mark.parametrize("spelling", ["http://gw:80", "http://GW", "http://10.0.0.7"])
async def test_an_older_statement_under_another_spelling_of_the_url_is_a_rollback(
        pki, release_key, tmp_path, spelling) -> None:
    """The memory is per release key, not per URL string: the same gateway reached as
    `:80`, in capitals or by its address gets no second chance at an old statement."""
    log = StatementLog(tmp_path)
    async with _gateway(pki, _statement(release_key, version=5)) as transport:
        await _verify(transport, _trust(pki, release_key), log)
    async with _gateway(pki, _statement(release_key, version=4)) as transport:
        with pytest.raises(GatewayNotAttested, match="statement_version_rollback"):
            await _verify(transport, _trust(pki, release_key), log, url=spelling)


async def test_an_equal_version_with_other_contents_is_refused(pki, release_key,
                                                               tmp_path) -> None:
    """Two different statements under one version of one key: the signer equivocates
    (shows one client values it never showed another), and the second is refused."""
    log = StatementLog(tmp_path)
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=3)
    async with _gateway(pki, _statement(release_key, version=7)) as transport:
        await _verify(transport, _trust(pki, release_key), log)
        again = await _verify(transport, _trust(pki, release_key), log)  # the same one
    assert not again.new_statement
    async with _gateway(pki, _statement(release_key, version=7, valid_until=later)
                        ) as transport:
        with pytest.raises(GatewayNotAttested, match="statement_equivocation"):
            await _verify(transport, _trust(pki, release_key), log)


async def test_the_gateway_serves_its_statements_as_installed(pki, release_key) -> None:
    statement = _statement(release_key)
    async with _gateway(pki, statement) as transport, httpx.AsyncClient(
            transport=transport, base_url="http://gw") as raw:
        served = (await raw.get("/v1/attestation/reference-values")).json()
    assert served == {"statements": [json.loads(statement)]}


def test_the_simulated_release_key_travels_with_the_simulated_roots(tmp_path, pki) -> None:
    key = generate_key()
    roots = tmp_path / "simulated-roots.pem"
    roots.write_bytes(pki.roots_pem() + public_pem(key.public_key()))
    trust = load_trust(release_keys=[], policy=None, simulated_roots=roots)
    assert key_id(key.public_key()) in trust.release_keys and trust.has_reference_values
    bare = load_trust(release_keys=[], policy=None, simulated_roots=None)
    assert not bare.has_reference_values and bare.roots.simulated == frozenset()


def test_a_proxy_with_nothing_to_check_against_refuses_to_start(capsys) -> None:
    assert main(["proxy", "--gateway", "http://127.0.0.1:9"]) == 2
    message = capsys.readouterr().err
    assert "no reference values" in message and "--release-key" in message


def test_accept_any_measurement_warns_on_every_start(tmp_path, capsys) -> None:
    policy = tmp_path / "dev.toml"
    policy.write_text("accept_any_measurement = true\n")
    assert main(["attest", "--gateway", "http://127.0.0.1:9", "--policy", str(policy)]) == 1
    assert "accept_any_measurement" in capsys.readouterr().err


def test_clients_recording_statements_at_once_lose_nothing(tmp_path) -> None:
    """Many clients of one user (threads of an app, several proxies) accept statements at
    the same time: each write of the versions file is whole and none is lost (the first
    version wrote through one shared temporary name, and a racing rename failed)."""
    from concurrent.futures import ThreadPoolExecutor

    from attestation.statement import verify_statement

    keys = [generate_key() for _ in range(8)]
    trusted = {key_id(k.public_key()): k.public_key() for k in keys}
    statements = [verify_statement(_statement(k, version=g + 1), trusted,
                                   now=dt.datetime.now(dt.UTC)) for g, k in enumerate(keys)]
    logs = [StatementLog(tmp_path) for _ in range(16)]

    def record(i: int) -> bool:  # each statement eight times, from three gateways
        return logs[i % 16].record(f"https://gateway-{i % 3}", statements[i % 8])

    with ThreadPoolExecutor(16) as pool:
        new = list(pool.map(record, range(64)))
    assert sum(new) == 8  # each statement is new exactly once
    highest = {key_id(k.public_key()): g + 1 for g, k in enumerate(keys)}
    assert {k: v["version"] for k, v in StatementLog(tmp_path).versions().items()} == highest
