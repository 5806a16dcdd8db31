"""One-request verification and the transparency log, end to end (issue 30): a cold
client verifies one bundle (report, collateral, statements, checkpoint, proofs) with no
other request; it refuses a bundle whose checkpoint, proofs or log do not hold (a fork,
a rollback, a replaced log, an unattested key, a proof for another tree); witnesses
cosign what it trusts; receipts are proven in the log and checked again offline; a
receipt naming what was not attested makes the client attest again."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from attestation.simulated import SimulatedPki
from attestation.statement import generate_key, key_id, sign_statement
from attestation.verify import TrustRoots
from cli.main import main
from enclave.tlog import tiles
from enclave.tlog.note import COSIGNATURE_V1, Checkpoint, NoteKey, NoteSigner, time_extension
from enclave.tlog.view import open_signed
from enclave.tlog.witness import Witness
from gateway.app import Gateway, create_app
from gateway.config import ServeConfig
from gateway.tlog import MemoryLogStore, TransparencyLog
from proxy.attestor import Attestor
from proxy.bundle import LOG_KEY, WitnessConfig, cosign
from proxy.dialects import make_client
from proxy.errors import GatewayNotAttested
from proxy.logview import KeptLogs
from proxy.receipts import ReceiptLog
from proxy.trust import StatementLog, Trust
from testkit.attested import accepting, simulated
from testkit.doubles import CHAT_MODEL, DeterministicTestEngine
from tests.served import served
from tests.unit.conftest import start

CHAT = json.dumps({"model": CHAT_MODEL, "max_tokens": 3,
                   "messages": [{"role": "user", "content": "a private prompt"}]}).encode()


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> SimulatedPki:
    return SimulatedPki.load_or_create(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def release_key():
    return generate_key()


def _statement(key, **changes) -> bytes:
    return sign_statement(dataclasses.replace(accepting(), **changes), key)


def _trust(pki, key) -> Trust:
    return Trust(TrustRoots().with_simulated(pki.roots_pem()),
                 {key_id(key.public_key()): key.public_key()})


def _gateway(pki, *statements: bytes, log: TransparencyLog | None = None) -> Gateway:
    attested = dataclasses.replace(simulated(pki), statements=statements)
    return create_app(ServeConfig.of(), DeterministicTestEngine().running,
                      attestation=attested, transparency_log=log)


async def _logged(app: Gateway, size: int = 1) -> None:
    """Until the gateway's log has signed a checkpoint of at least `size` entries."""
    while app.log.checkpoint_size() < size:
        await app.log.turned.wait()


@contextlib.asynccontextmanager
async def _running(app: Gateway, size: int = 1) -> AsyncIterator[Gateway]:
    async with app.router.lifespan_context(app):
        await start(app)
        await _logged(app, size)
        yield app


class CountingTransport(httpx.AsyncBaseTransport):
    """Every request a client makes, on its way to the app (and nowhere else)."""

    def __init__(self, app: Gateway, rewrite: Callable[[str, bytes], bytes] | None = None
                 ) -> None:
        self._inner = httpx.ASGITransport(app=app)
        self.paths: list[str] = []
        self._rewrite = rewrite

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.paths.append(request.url.path)
        response = await self._inner.handle_async_request(request)
        if self._rewrite is None:
            return response
        body = self._rewrite(request.url.path, await response.aread())
        return httpx.Response(response.status_code, headers=[
            (k, v) for k, v in response.headers.items() if k != "content-length"],
            content=body)


async def _verify(transport, trust, state: Path, *, url: str = "http://gw", **options
                  ) -> Attestor:
    attestor = Attestor(url, trust=trust, statements=StatementLog(state),
                        transport=transport, logs=KeptLogs(state), **options)
    try:
        await attestor.verify(lambda claims: True)
    finally:
        await attestor.aclose()
    return attestor


async def test_a_cold_client_verifies_one_bundle_and_makes_no_other_request(
        pki, release_key, tmp_path) -> None:
    statement = _statement(release_key)
    async with _running(_gateway(pki, statement)) as app:
        transport = CountingTransport(app)
        attestor = await _verify(transport, _trust(pki, release_key), tmp_path)
    assert transport.paths == ["/v1/attestation/bundle"]  # one request, nothing else
    assert attestor.last is not None and attestor.last_statement is not None
    assert attestor.last.keys[LOG_KEY] == app.log.public_key
    assert attestor.checkpoint is not None
    assert attestor.checkpoint.checkpoint.origin == app.log.origin
    kept = json.loads((tmp_path / "logs.json").read_text())
    assert kept["gateways"]["http://gw"] == app.log.origin  # the log is kept for next time


def _rewriting_bundle(change: Callable[[dict], None]) -> Callable[[str, bytes], bytes]:
    def rewrite(path: str, body: bytes) -> bytes:
        if path != "/v1/attestation/bundle":
            return body
        bundle = json.loads(body)
        change(bundle)
        return json.dumps(bundle).encode()
    return rewrite


def _other_key_checkpoint(bundle: dict) -> None:
    note = bundle["checkpoint"].encode()
    text = note[:note.index(b"\n\n") + 1]
    origin = text.split(b"\n")[0].decode()
    bundle["checkpoint"] = NoteSigner(origin, Ed25519PrivateKey.generate()).sign(text).decode()


def _proof_for_another_size(bundle: dict) -> None:
    note = bundle["checkpoint"].encode()
    checkpoint = Checkpoint.parse(note[:note.index(b"\n\n") + 1])
    bundle["inclusion"][0]["proof"] = [base64.b64encode(b"\x01" * 32).decode()]
    assert checkpoint.size == 1  # one statement: its true proof is empty


def _no_inclusion(bundle: dict) -> None:
    bundle["inclusion"] = []


def _report_without_log_key(bundle: dict) -> None:
    bundle["checkpoint"] = "not a checkpoint\n"


@pytest.mark.parametrize(("change", "reason"), [
    (_other_key_checkpoint, "checkpoint_invalid"),
    (_proof_for_another_size, "inclusion_invalid"),
    (_no_inclusion, "statement_not_logged"),
    (_report_without_log_key, "checkpoint_invalid"),
], ids=["checkpoint-by-another-key", "proof-for-another-tree", "statement-not-logged",
        "no-checkpoint"])
async def test_a_bundle_whose_log_does_not_hold_is_refused(
        pki, release_key, tmp_path, change, reason) -> None:
    async with _running(_gateway(pki, _statement(release_key))) as app:
        transport = CountingTransport(app, _rewriting_bundle(change))
        with pytest.raises(GatewayNotAttested, match=reason):
            await _verify(transport, _trust(pki, release_key), tmp_path)
    assert not (tmp_path / "logs.json").exists()  # nothing kept from a refused bundle


def _log(origin: str, key: Ed25519PrivateKey) -> TransparencyLog:
    store = MemoryLogStore()
    store.origin = origin
    return TransparencyLog(store, key)


async def test_an_old_checkpoint_replayed_or_a_report_without_its_crl_is_refused(
        pki, release_key, tmp_path) -> None:
    async with _running(_gateway(pki, _statement(release_key))) as app:
        def old_checkpoint(bundle: dict) -> None:  # signed by the log, an hour ago
            note = bundle["checkpoint"].encode()
            checkpoint = Checkpoint.parse(note[:note.index(b"\n\n") + 1])
            old = dataclasses.replace(checkpoint, extensions=(
                time_extension(time.time() - 3600),))
            bundle["checkpoint"] = app.log.signer.sign(old.text()).decode()

        def without_crl(bundle: dict) -> None:  # the vendor's revocation list left out
            report = json.loads(bundle["report"])
            assert report["collateral"]["amd_crl"]
            report["collateral"]["amd_crl"] = None
            bundle["report"] = json.dumps(report)

        trust = _trust(pki, release_key)
        with pytest.raises(GatewayNotAttested, match="checkpoint_stale"):
            await _verify(CountingTransport(app, _rewriting_bundle(old_checkpoint)), trust,
                          tmp_path)
        with pytest.raises(GatewayNotAttested, match="(?i)crl|revocation"):
            await _verify(CountingTransport(app, _rewriting_bundle(without_crl)), trust,
                          tmp_path)
        await _verify(CountingTransport(app), trust, tmp_path)  # as served, it holds


async def test_the_served_tiles_are_read_by_go_s_tlog(pki, release_key, tmp_path,
                                                      tlogcheck) -> None:
    """A mirror of the log fetched over HTTP from the gateway's tile routes, checked by Go's
    sumdb/note and sumdb/tlog against the checkpoint the gateway signed."""
    async with _running(_gateway(pki, _statement(release_key))) as app:
        for n in range(300):
            app.log.append(b"receipt %d" % n)
        await _logged(app, 301)
        folder = tmp_path / "mirror"
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://gw") as http:
            note = (await http.get("/v1/log/checkpoint")).content
            size = Checkpoint.parse(note[:note.index(b"\n\n") + 1]).size
            for level, index, width in tiles.tiles_of(size):
                path = tiles.tile_path(level, index, width)
                r = await http.get("/v1/log/" + path)
                assert r.status_code == 200, path
                (folder / path).parent.mkdir(parents=True, exist_ok=True)
                (folder / path).write_bytes(r.content)
            (folder / "checkpoint").write_bytes(note)
            missing = await http.get("/v1/log/tile/0/009")
            assert missing.status_code == 404
            assert missing.json()["error"]["code"] == "not_found"
            bad = await http.get("/v1/log/proof/inclusion", params={"leaf": "zz"})
            assert bad.status_code == 400 and bad.json()["error"]["param"] == "leaf"
        vkey = NoteKey(app.log.origin, app.log.public_key).vkey()
    checked = subprocess.run([str(tlogcheck), "-dir", str(folder), "-vkey", vkey],
                             capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout
    assert json.loads(checked.stdout)["entries_checked"] == 301


async def test_a_forked_log_is_refused(pki, release_key, tmp_path) -> None:
    """The operator shows this client one log, then another of the same size and origin,
    signed by the same attested key, with a different root: the client refuses it."""
    key, origin = Ed25519PrivateKey.generate(), "cloister.log/forked"
    trust = _trust(pki, release_key)
    async with _running(_gateway(pki, _statement(release_key), log=_log(origin, key))) as a:
        first = await _verify(CountingTransport(a), trust, tmp_path)
    forked = _gateway(pki, _statement(release_key, version=2), log=_log(origin, key))
    async with _running(forked) as b:
        assert b.log.checkpoint_size() == first.checkpoint.checkpoint.size  # type: ignore
        assert b.log.tree.root() != a.log.tree.root()  # same size, another root
        with pytest.raises(GatewayNotAttested, match="log_forked"):
            await _verify(CountingTransport(b), trust, tmp_path)
    kept = json.loads((tmp_path / "logs.json").read_text())
    assert Checkpoint.parse(kept["logs"][origin]["note"].encode().split(b"\n\n")[0] + b"\n"
                            ).root == a.log.tree.root()  # the first view is kept


async def test_a_rolled_back_or_replaced_log_is_refused(pki, release_key, tmp_path) -> None:
    key, origin = Ed25519PrivateKey.generate(), "cloister.log/rolled"
    trust = _trust(pki, release_key)
    grown = _log(origin, key)
    grown.append(b"an earlier receipt")
    async with _running(_gateway(pki, _statement(release_key), log=grown), size=2) as a:
        await _verify(CountingTransport(a), trust, tmp_path)
    async with _running(_gateway(pki, _statement(release_key), log=_log(origin, key))) as b:
        with pytest.raises(GatewayNotAttested, match="log_rolled_back"):
            await _verify(CountingTransport(b), trust, tmp_path)
    async with _running(_gateway(pki, _statement(release_key))) as c:  # a new log
        with pytest.raises(GatewayNotAttested, match="log_replaced"):
            await _verify(CountingTransport(c), trust, tmp_path)


async def test_the_log_grows_and_the_client_follows_it_by_consistency(
        pki, release_key, tmp_path) -> None:
    trust = _trust(pki, release_key)
    async with _running(_gateway(pki, _statement(release_key))) as app:
        first = await _verify(CountingTransport(app), trust, tmp_path)
        for n in range(5):
            app.log.append(b"receipt %d" % n)
        await _logged(app, 6)
        later = await _verify(CountingTransport(app), trust, tmp_path)
        # the same gateway through another of its URLs (its TLS listener, a relay): the
        # client proves consistency from the checkpoint it kept through the first
        app.log.append(b"receipt 5")
        await _logged(app, 7)
        transport = CountingTransport(app)
        other = await _verify(transport, trust, tmp_path, url="https://gw:8443")
    assert first.checkpoint is not None and later.checkpoint is not None
    assert (first.checkpoint.checkpoint.size, later.checkpoint.checkpoint.size) == (1, 6)
    assert other.checkpoint is not None and other.checkpoint.checkpoint.size == 7
    assert transport.paths == ["/v1/attestation/bundle", "/v1/log/proof/consistency"]


# --- witnesses --------------------------------------------------------------------------

@pytest.fixture
def witness_key() -> NoteSigner:
    return NoteSigner("witness.test/w1", Ed25519PrivateKey.generate(), COSIGNATURE_V1)


async def test_a_witness_cosigns_a_consistent_log_and_refuses_a_fork(
        pki, release_key, tmp_path, witness_key) -> None:
    key, origin = Ed25519PrivateKey.generate(), "cloister.log/witnessed"
    log_key = NoteKey(origin, key.public_key().public_bytes_raw())
    witness = Witness(witness_key, {origin: log_key})
    from cli.witness import app as witness_app

    config = WitnessConfig("http://witness", witness_key.key)
    w = httpx.AsyncClient(transport=httpx.ASGITransport(app=witness_app(witness)))
    trust = _trust(pki, release_key)
    async with _running(_gateway(pki, _statement(release_key), log=_log(origin, key))) as a:
        attestor = await _verify(CountingTransport(a), trust, tmp_path)
        assert attestor.checkpoint is not None
        gw = httpx.AsyncClient(transport=httpx.ASGITransport(app=a), base_url="http://gw")
        now = int(time.time())
        cosigned = await cosign(config, attestor.checkpoint, gateway=gw, http=w,
                                logs=KeptLogs(tmp_path), now=now)
        assert abs(cosigned - now) <= 2 and witness.state[origin].size == 1
        a.log.append(b"a receipt")
        await _logged(a, 2)
        grown = await _verify(CountingTransport(a), trust, tmp_path)
        assert grown.checkpoint is not None
        # a second client, who never spoke to this witness: 409, then a consistency proof
        await cosign(config, grown.checkpoint, gateway=gw, http=w,
                     logs=KeptLogs(tmp_path / "other"), now=now)
        assert witness.state[origin].size == 2
        # a cosignature from a key the client does not know is no cosignature
        stranger = WitnessConfig("http://witness", NoteSigner(
            "witness.test/w1", Ed25519PrivateKey.generate(), COSIGNATURE_V1).key)
        with pytest.raises(GatewayNotAttested, match="note_unsigned_by_key"):
            await cosign(stranger, grown.checkpoint, gateway=gw, http=w,
                         logs=KeptLogs(tmp_path), now=now)
        # ... and one older than the client allows is stale
        with pytest.raises(GatewayNotAttested, match="cosignature_stale"):
            await cosign(config, grown.checkpoint, gateway=gw, http=w,
                         logs=KeptLogs(tmp_path), now=now + 3600, max_age=600)
        await gw.aclose()
    # the operator forks the log: the witness refuses to cosign another root at size 2
    forked = _log(origin, key)
    forked.append(b"another receipt")
    async with _running(_gateway(pki, _statement(release_key), log=forked), size=2) as b:
        assert b.log.checkpoint is not None
        gw = httpx.AsyncClient(transport=httpx.ASGITransport(app=b), base_url="http://gw")
        with pytest.raises(GatewayNotAttested, match="log_forked: the witness"):
            await cosign(config, open_signed(b.log.checkpoint, log_key.public_key),
                         gateway=gw, http=w, logs=KeptLogs(tmp_path / "third"), now=now)
        await gw.aclose()
    await w.aclose()
    assert witness.state[origin].size == 2


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_cloister_witness_serves_and_the_attestor_requires_its_cosignature(
        pki, release_key, tmp_path) -> None:
    key, origin = Ed25519PrivateKey.generate(), "cloister.log/cli-witness"
    vkey = NoteKey(origin, key.public_key().public_bytes_raw()).vkey()
    keygen = subprocess.run([sys.executable, "-m", "cli", "witness", "keygen", "--name",
                             "witness.test/cli", "--key", str(tmp_path / "w.key")],
                            capture_output=True, text=True, timeout=60, check=True)
    witness_vkey = keygen.stdout.strip()
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "cli", "witness", "serve", "--name", "witness.test/cli",
         "--key", str(tmp_path / "w.key"), "--log", vkey, "--state",
         str(tmp_path / "w-state.json"), "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == witness_vkey  # its key, once serving
        url = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient() as probe:
            for _ in range(100):
                with contextlib.suppress(httpx.TransportError):
                    await probe.post(url + "/add-checkpoint", content=b"")
                    break
                await asyncio.sleep(0.1)
        trust = _trust(pki, release_key)
        app = _gateway(pki, _statement(release_key), log=_log(origin, key))
        async with _running(app):
            attestor = await _verify(CountingTransport(app), trust, tmp_path / "client",
                                     witnesses=[WitnessConfig.parse(f"{url}={witness_vkey}")])
            assert attestor.cosigned_at > 0
            state = json.loads((tmp_path / "w-state.json").read_text())
            assert state[origin]["size"] == 1  # persisted before the cosignature left
            wrong = NoteSigner("witness.test/cli", Ed25519PrivateKey.generate(),
                               COSIGNATURE_V1)
            with pytest.raises(GatewayNotAttested, match="note_unsigned_by_key"):
                await _verify(CountingTransport(app), trust, tmp_path / "client2",
                              witnesses=[WitnessConfig(url, wrong.key)])
    finally:
        process.terminate()
        process.communicate(timeout=10)


# --- receipts proven in the log, checked offline; continuous attestation -------------------

def test_receipts_are_proven_in_the_log_and_verified_offline(
        pki, release_key, tmp_path, capsys) -> None:
    app = _gateway(pki, _statement(release_key))
    state = tmp_path / "client"
    release_pem = tmp_path / "release.pem"
    from attestation.statement import public_pem

    release_pem.write_bytes(public_pem(release_key.public_key()))
    roots = tmp_path / "simulated-roots.pem"
    roots.write_bytes(pki.roots_pem())

    async def chat(url: str) -> None:
        client = make_client(url, "ohttp", attestation=Attestor(
            url, trust=_trust(pki, release_key), statements=StatementLog(state),
            logs=KeptLogs(state)), keep_receipt=ReceiptLog(state).keeper(url))
        for _ in range(2):
            assert (await client.request("POST", "/v1/chat/completions", CHAT)).status == 200
        await client.aclose()

    with served(app) as url:
        asyncio.run(chat(url))
        # the receipts reach the log within a turn: prove them (online), then offline
        deadline = time.monotonic() + 30
        while app.log.checkpoint_size() < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        code = main(["receipts", "prove", "--state-dir", str(state), "--release-key",
                     str(release_pem), "--simulated-roots", str(roots)])
        out = capsys.readouterr().out
        assert code == 0, out
        assert out.count("\tPROVEN\tin log " + app.log.origin) == 2
    # offline: the gateway is gone
    assert main(["receipts", "verify", "--state-dir", str(state)]) == 0
    out = capsys.readouterr().out
    assert out.count("\tVERIFIED\t") == 2 and f"in log {app.log.origin} at" in out
    # a kept proof changed afterwards no longer holds
    proofs = state / "receipt-proofs.jsonl"
    lines = proofs.read_text().splitlines()
    first = json.loads(lines[0])
    first["index"] = first["index"] + 1
    proofs.write_text("\n".join([json.dumps(first), *lines[1:]]) + "\n")
    assert main(["receipts", "verify", "--state-dir", str(state)]) == 1
    assert "NOT VERIFIED\tinclusion_invalid" in capsys.readouterr().out


async def test_a_receipt_naming_an_unattested_workload_or_epoch_makes_the_client_attest_again(
        pki, release_key, tmp_path) -> None:
    async with _running(_gateway(pki, _statement(release_key))) as app:
        transport = CountingTransport(app)
        attestor = Attestor("http://gw", trust=_trust(pki, release_key),
                            statements=StatementLog(tmp_path), transport=transport,
                            logs=KeptLogs(tmp_path))
        client = make_client("http://gw", "ohttp", transport=transport, attestation=attestor)
        assert (await client.request("POST", "/v1/chat/completions", CHAT)).status == 200
        verified_at = attestor.verified_at
        assert not attestor.due()
        dialect = await client.dialect()
        [receipt] = dialect.receipts.kept  # type: ignore[attr-defined]
        attestor.saw_receipt(receipt)  # what was attested: nothing to do
        assert not attestor.due()
        other = dataclasses.replace(receipt, fields={**receipt.fields, "epoch": 999})
        attestor.saw_receipt(other)  # a key epoch the client never verified
        assert attestor.due()
        assert (await client.request("POST", "/v1/chat/completions", CHAT)).status == 200
        assert attestor.verified_at >= verified_at and not attestor.due()
        assert transport.paths.count("/v1/attestation/bundle") == 2
        moved = dataclasses.replace(receipt, fields={**receipt.fields, "workload": "00" * 32})
        attestor.saw_receipt(moved)  # another workload answered
        assert attestor.due()
        await client.aclose()


def test_clients_sharing_a_state_folder_save_their_logs_at_once(tmp_path) -> None:
    """Several SDK clients of one process keep their logs in one folder: saves that cross
    leave a whole file and raise nothing (they once shared one temporary name)."""
    from concurrent.futures import ThreadPoolExecutor

    kept = [KeptLogs(tmp_path) for _ in range(8)]

    def save(i: int) -> None:
        for n in range(50):
            kept[i].record_witnessed(f"witness-{i}", "origin", n)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(save, range(8)))
    saved = json.loads((tmp_path / "logs.json").read_text())["witnesses"]
    assert 49 in {sizes["origin"] for sizes in saved.values()}  # one client's last save
    assert [p.name for p in tmp_path.iterdir()] == ["logs.json"]  # no temporary left
