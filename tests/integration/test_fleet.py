"""A fleet behind one address, for real: a keyholder, two gateway replicas with the real
engine joining it, a real PostgreSQL they share, and a round-robin TCP balancer on
loopback in front; `cloister proxy` and the OpenAI SDK, the admin CLI and the platform
API through the balancer."""

from __future__ import annotations

import asyncio
import json
import os
import re
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from enclave.route_hint import RouteHint, user_key
from proxy.attestor import Unverified
from proxy.dialects import make_client
from tests.balancer import RoundRobinBalancer
from tests.environment import clean_environment
from tests.integration.conftest import (
    ROOT,
    cloister,
    free_port,
    wait_ready,
)
from tests.shipped_balancers import haproxy

pytestmark = pytest.mark.engine
MODEL = "cloister-demo"


class Fleet:
    def __init__(self, folder: Path, database: str) -> None:
        self.folder, self.database = folder, database
        self.state = folder / "state"
        self.release_key = folder / "release.key"
        self.admin_key = folder / "admin.key"
        self.statement = folder / "statement.json"
        self.keyholder_url = ""
        self.processes: list[subprocess.Popen[bytes]] = []
        self.replicas: list[dict[str, int]] = []
        self.logs: list[Path] = []

    def replica_args(self, ports: dict[str, int], *extra: str) -> list[str]:
        return ["--port", str(ports["http"]), "--tls", "--tls-port", str(ports["tls"]),
                "--tls-host", "127.0.0.1", "--metrics-port", str(ports["metrics"]),
                "--attestation", "simulated", "--state-dir", str(self.state),
                "--database", self.database, "--embedding-model", "none",
                "--join", self.keyholder_url, "--release-key", f"{self.release_key}.pub",
                "--reference-values", str(self.statement),
                "--admin-public-key", f"{self.admin_key}.pub", *extra,
                "--", "--enable-prompt-tokens-details"]  # usage says the cached tokens

    def spawn(self, name: str, *argv: str) -> subprocess.Popen[bytes]:
        log = self.folder / f"{name}.log"
        self.logs.append(log)
        env = clean_environment(CLOISTER_CACHE=str(ROOT / ".cache"))
        process = subprocess.Popen([sys.executable, "-m", "cli", *argv], cwd=ROOT,
                                   env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
        self.processes.append(process)
        return process

    def trust(self) -> list[str]:
        return ["--release-key", f"{self.release_key}.pub",
                "--simulated-roots", str(self.state / "simulated-roots.pem")]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, postgres) -> Iterator[Fleet]:
    folder = tmp_path_factory.mktemp("fleet")
    fleet = Fleet(folder, postgres.create_database("fleet"))
    for made in (cloister("release", "keygen", "--out", str(fleet.release_key)),
                 cloister("admin", "keygen", "--out", str(fleet.admin_key))):
        assert made.returncode == 0, made.stderr
    keyholder_port = free_port()
    fleet.keyholder_url = f"http://127.0.0.1:{keyholder_port}"
    fleet.replicas = [{"http": free_port(), "tls": free_port(), "metrics": free_port()}
                      for _ in range(2)]
    gateway = cloister("workload", "--digest-only", *fleet.replica_args(fleet.replicas[0]))
    # The keyholder's release key is measured: its digest is that of the one it runs with.
    keyholder = cloister("keyholder", "--attestation", "simulated", "--release-key",
                         f"{fleet.release_key}.pub", "--print-digest")
    assert gateway.returncode == 0 and keyholder.returncode == 0, gateway.stderr
    from attestation.simulated import simulated_measurement
    from attestation.simulated.intel import MR_SEAM

    values = folder / "VALUES.toml"
    values.write_text(
        f'version = 1\nvalid_days = 7\nworkloads = ["{gateway.stdout.strip()}", '
        f'"{keyholder.stdout.strip()}"]\n[platforms.simulated-sev-snp]\n'
        f'measurements = ["{simulated_measurement().hex()}"]\n[platforms.simulated-tdx]\n'
        f'mrtd = ["{simulated_measurement().hex()}"]\nmrseam = ["{MR_SEAM.hex()}"]\n')
    signed = cloister("release", "sign", "--key", str(fleet.release_key), "--values",
                      str(values), "--out", str(fleet.statement))
    assert signed.returncode == 0, signed.stderr
    holder = fleet.spawn("keyholder", "keyholder", "--port", str(keyholder_port),
                         "--attestation", "simulated", "--state-dir", str(fleet.state),
                         "--reference-values", str(fleet.statement),
                         "--release-key", f"{fleet.release_key}.pub")
    wait_ready(f"{fleet.keyholder_url}/health", holder, fleet.logs[-1])
    started = time.monotonic()
    replicas = [fleet.spawn(f"replica{i}", "serve", *fleet.replica_args(ports))
                for i, ports in enumerate(fleet.replicas)]
    for process, ports, log in zip(replicas, fleet.replicas, fleet.logs[1:], strict=True):
        wait_ready(f"http://127.0.0.1:{ports['http']}/ready", process, log)
    print(f"\nfleet of two replicas ready {time.monotonic() - started:.1f}s after start")
    yield fleet
    for process in fleet.processes:
        process.terminate()
    for process in fleet.processes:
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()


def _balancer(fleet: Fleet, kind: str) -> RoundRobinBalancer:
    return RoundRobinBalancer([("127.0.0.1", ports[kind]) for ports in fleet.replicas])


def _served(fleet: Fleet, index: int) -> float:
    """Inference requests a replica answered with 200 (any dialect)."""
    text = httpx.get(f"http://127.0.0.1:{fleet.replicas[index]['metrics']}/metrics").text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("cloister_requests_total{") and 'status="200"' in line
               and 'dialect="control"' not in line)


def _served_all(fleet: Fleet) -> list[float]:
    return [_served(fleet, i) for i in range(2)]


@pytest.fixture(scope="module")
def fleet_key(fleet) -> str:
    """A platform API key in the shared database (Atoma requests carry one)."""
    with _balancer(fleet, "tls") as lb:
        url = f"https://127.0.0.1:{lb.port}"
        account = _admin(fleet, url, "accounts", "create", "atoma-users")
        return str(_admin(fleet, url, "keys", "create", "--account", account["id"],
                          "--name", "atoma", "--budget-tokens", "50000")["key"])


@pytest.mark.parametrize("protocol", ["ohttp", "ehbp", "atoma"])
def test_keys_fetched_from_one_replica_work_on_the_other(fleet, fleet_key, protocol) -> None:
    """A new connection per request, so the balancer alternates: the report, the keys and
    the requests each land on whichever replica is next."""
    import asyncio

    from proxy.attestor import Attestor
    from proxy.dialects import make_client
    from proxy.trust import load_trust

    trust = load_trust(release_keys=[Path(f"{fleet.release_key}.pub")], policy=None,
                       simulated_roots=fleet.state / "simulated-roots.pem")
    before = _served_all(fleet)
    # Atoma with accounts goes to the attested TLS listeners (the fleet's one certificate)
    kind = "tls" if protocol == "atoma" else "http"
    with _balancer(fleet, kind) as lb:
        url = f"{'https' if kind == 'tls' else 'http'}://127.0.0.1:{lb.port}"
        no_reuse = httpx.Limits(max_keepalive_connections=0)

        def fresh() -> httpx.AsyncHTTPTransport:  # the report vouches for the TLS key
            return httpx.AsyncHTTPTransport(limits=no_reuse, verify=False)

        async def run() -> list[int]:
            # Atoma's own connections, which pin the certificate the report binds
            client = make_client(url, protocol, api_key=fleet_key, limits=no_reuse,
                                 transport=None if protocol == "atoma" else fresh(),
                                 attestation=Attestor(url, trust=trust, transport=fresh()))
            body = json.dumps({"model": MODEL, "max_tokens": 2,
                               "messages": [{"role": "user", "content": "hi"}]}).encode()
            try:
                return [(await client.request("POST", "/v1/chat/completions", body)).status
                        for _ in range(4)]
            finally:
                await client.aclose()

        assert asyncio.run(run()) == [200] * 4
    after = _served_all(fleet)
    assert all(a > b for a, b in zip(after, before, strict=True))  # both replicas answered


def test_the_proxy_and_the_sdk_work_through_a_balancer_over_the_fleet(fleet, tmp_path) -> None:
    with _balancer(fleet, "http") as lb:
        port = free_port()
        proxy = subprocess.Popen(
            [sys.executable, "-m", "cli", "proxy", "--gateway",
             f"http://127.0.0.1:{lb.port}", "--port", str(port), "--state-dir",
             str(tmp_path), *fleet.trust()], cwd=ROOT, stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT)
        try:
            wait_ready(f"http://127.0.0.1:{port}/v1/models", proxy, Path(os.devnull))
            sdk = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="local")
            for _ in range(3):
                reply = sdk.chat.completions.create(
                    model=MODEL, max_tokens=3, messages=[{"role": "user", "content": "hi"}])
                assert reply.choices[0].message.content is not None
        finally:
            proxy.terminate()
            proxy.wait(30)
        assert all(count > 0 for count in lb.counts.values())  # report and keys: A and B


def _admin(fleet: Fleet, url: str, *args: str) -> dict:
    done = cloister("admin", "--gateway", url, "--key", str(fleet.admin_key),
                    *fleet.trust(), *args)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_a_conversation_alternates_replicas_through_the_balancer(fleet, tmp_path) -> None:
    with _balancer(fleet, "tls") as lb:
        url = f"https://127.0.0.1:{lb.port}"
        account = _admin(fleet, url, "accounts", "create", "acme")
        key = _admin(fleet, url, "keys", "create", "--account", account["id"], "--name", "t",
                     "--budget-tokens", "50000")["key"]
        bot = _admin(fleet, url, "chatbots", "create", "--account", account["id"], "--name",
                     "b", "--model", MODEL, "--system-prompt", "Be brief.")
        cert = tmp_path / "fleet.pem"
        attested = cloister("attest", "--gateway", url, *fleet.trust(), "--write-cert",
                            str(cert))
        assert attested.returncode == 0, attested.stderr
        tls = ssl.create_default_context(cafile=str(cert))  # one certificate, every replica
        conversation, replies = None, []
        for turn in range(4):
            with httpx.Client(verify=tls, timeout=120) as client:  # a new connection each
                r = client.post(f"{url}/api/v1/chatbot/external/{bot['id']}/chat",
                                headers={"authorization": f"Bearer {key}"},
                                json={"message": f"turn {turn}",
                                      **({"conversation_id": conversation}
                                         if conversation else {})})
            assert r.status_code == 200, r.text
            conversation = r.json()["conversation_id"]
            replies.append(r.json()["response"])
        counts = list(lb.counts.values())
    assert all(c > 0 for c in counts)  # the turns went to both replicas


def test_a_request_replayed_to_the_other_replica_is_refused(fleet) -> None:
    from tests.integration.test_side_channels import answered_ehbp_request, replay_headers

    a, b = (f"http://127.0.0.1:{ports['http']}" for ports in fleet.replicas)
    captured = answered_ehbp_request(a)
    replayed = httpx.post(f"{b}{captured.url.path}", content=captured.content, timeout=60,
                          headers=replay_headers(captured))
    assert replayed.status_code == 409


def test_a_replica_with_another_max_tokens_is_refused_the_seed(fleet) -> None:
    ports = {"http": free_port(), "tls": free_port(), "metrics": free_port()}
    done = subprocess.run([sys.executable, "-m", "cli", "serve",
                           *fleet.replica_args(ports, "--max-tokens", "7")], cwd=ROOT,
                          capture_output=True, text=True, timeout=300,
                          env=clean_environment(CLOISTER_CACHE=str(ROOT / ".cache")))
    assert done.returncode == 2
    assert "join_refused" in done.stderr and "workload_not_allowed" in done.stderr


def test_an_operator_keyholder_gets_no_seed_and_gives_none(fleet, tmp_path) -> None:
    """The attack of issue 27: the release's own keyholder code, started by the operator
    with the operator's release key and a statement the operator signed (naming the
    honest keyholder, the honest replica and their own keyholder). It gets no seed from
    the fleet's keyholder, and an honest replica told to join it refuses it before any
    seed crosses."""
    from attestation.simulated import simulated_measurement
    from attestation.simulated.intel import MR_SEAM

    operator = tmp_path / "operator.key"
    made = cloister("release", "keygen", "--out", str(operator))
    assert made.returncode == 0, made.stderr
    rogue = ["keyholder", "--attestation", "simulated", "--state-dir", str(fleet.state),
             "--release-key", f"{operator}.pub"]
    digests = [cloister(*rogue, *extra, "--print-digest").stdout.strip()
               for extra in ([], ["--join", fleet.keyholder_url])]
    honest = [cloister("keyholder", "--attestation", "simulated", "--release-key",
                       f"{fleet.release_key}.pub", "--print-digest").stdout.strip(),
              cloister("workload", "--digest-only",
                       *fleet.replica_args(fleet.replicas[0])).stdout.strip()]
    values = tmp_path / "VALUES.toml"
    values.write_text(
        f"version = 9\nvalid_days = 7\nworkloads = {json.dumps(digests + honest)}\n"
        f'[platforms.simulated-sev-snp]\nmeasurements = ["{simulated_measurement().hex()}"]\n'
        f'[platforms.simulated-tdx]\nmrtd = ["{simulated_measurement().hex()}"]\n'
        f'mrseam = ["{MR_SEAM.hex()}"]\n')
    statement = tmp_path / "operator-statement.json"
    signed = cloister("release", "sign", "--key", str(operator), "--values", str(values),
                      "--out", str(statement))
    assert signed.returncode == 0, signed.stderr
    released_before = fleet.logs[0].read_text().count("seed_released")
    joined = cloister(*rogue, "--port", str(free_port()), "--reference-values",
                      str(statement), "--join", fleet.keyholder_url, timeout=120)
    assert joined.returncode == 2 and "no keyholder released" in joined.stderr
    assert "fleet_trust_anchors_differ" in joined.stderr  # it will not even ask
    assert fleet.logs[0].read_text().count("seed_released") == released_before
    # the operator's keyholder on its own, and an honest replica sent to it
    port = free_port()
    process = fleet.spawn("operator-keyholder", *rogue, "--port", str(port),
                          "--reference-values", str(statement))
    wait_ready(f"http://127.0.0.1:{port}/health", process, fleet.logs[-1])
    ports = {"http": free_port(), "tls": free_port(), "metrics": free_port()}
    args = fleet.replica_args(ports)
    args[args.index(fleet.keyholder_url)] = f"http://127.0.0.1:{port}"
    done = subprocess.run([sys.executable, "-m", "cli", "serve", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300,
                          env=clean_environment(CLOISTER_CACHE=str(ROOT / ".cache")))
    assert done.returncode == 2 and "no keyholder released" in done.stderr
    assert "workload_not_allowed" in done.stderr


def test_the_note_numbers(fleet) -> None:
    """What a join costs: the replicas' `joined_fleet` and the keyholder's
    `seed_released` durations (printed for the record)."""
    keyholder = fleet.logs[0].read_text()
    releases = [float(m) for m in re.findall(r'"duration_ms": ([0-9.]+)[^\n]*seed_released',
                                             keyholder)
                + re.findall(r'seed_released[^\n]*"duration_ms": ([0-9.]+)', keyholder)]
    joins = [float(m) for log in fleet.logs[1:3] for m in re.findall(
        r'joined_fleet[^\n]*"duration_ms": ([0-9.]+)|"duration_ms": ([0-9.]+)[^\n]*joined_fleet',
        log.read_text()) for m in m if m]
    assert releases and joins
    print(f"\nkeyholder: {len(releases)} releases, {min(releases):.1f} to {max(releases):.1f} "
          f"ms each; replicas joined in {', '.join(f'{j:.0f} ms' for j in joins)}")


# --- cache affinity through a real balancer (issue 32, item 3) ----------------------------

SHARED_SYSTEM = {"role": "system", "content": " ".join(
    f"Rule {i}: answer the customer politely and cite the policy section." for i in range(40))}


async def _workload(url: str, hints: bool, tenants: int = 15, rounds: int = 3
                    ) -> dict[int, list[tuple[int, int]]]:
    """Tenants (each a Continuum client: its own secret, so its own cache salt) asking one
    question a round, in turn; an odd number of them, so that round-robin does not keep
    each tenant on one replica by accident. A connection idle for 0.2 s is closed, so
    each round is a new connection (a registration and the request after it share one).
    (cached, prompt) tokens of each answer."""
    limits = httpx.Limits(max_connections=4, keepalive_expiry=0.2)
    clients = {t: make_client(url, "continuum", attestation=Unverified(), limits=limits,
                              route_hint=RouteHint(user_key(os.urandom(32))) if hints
                              else None) for t in range(tenants)}
    usage: dict[int, list[tuple[int, int]]] = {t: [] for t in range(tenants)}
    try:
        for turn in range(rounds):
            if turn:  # the replicas allow 2 secret registrations a second from one address
                await asyncio.sleep(tenants / 2)  # (a balancer's) after a burst of 20
            for tenant, client in clients.items():
                body = json.dumps({"model": MODEL, "max_tokens": 1, "messages": [
                    SHARED_SYSTEM, {"role": "user", "content": f"Tenant {tenant}, "
                                                               f"question {turn}?"}]})
                answer = await client.request("POST", "/v1/chat/completions", body.encode())
                assert answer.status == 200, answer.body[:200]
                counted = json.loads(answer.body)["usage"]
                details = counted.get("prompt_tokens_details") or {}
                usage[tenant].append((int(details.get("cached_tokens") or 0),
                                      int(counted["prompt_tokens"])))
    finally:
        for client in clients.values():
            await client.aclose()
    return usage


def _chats(fleet: Fleet, index: int) -> float:
    """Chat completions a replica answered with 200."""
    text = httpx.get(f"http://127.0.0.1:{fleet.replicas[index]['metrics']}/metrics").text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("cloister_requests_total{") and 'status="200"' in line
               and 'route="/v1/chat/completions"' in line)


def _hit_rate(usage: dict[int, list[tuple[int, int]]]) -> float:
    cached = sum(c for turns in usage.values() for c, _ in turns)
    return cached / sum(p for turns in usage.values() for _, p in turns)


def test_the_routing_hint_keeps_each_tenants_prefix_warm_behind_haproxy(fleet,
                                                                         tmp_path) -> None:
    """Two replicas with the real engine (prefix caching on, one seed from the keyholder,
    the shared PostgreSQL) behind the HAProxy configuration we ship: tenants that share a
    system prompt, each hashed to a replica by its hint, against a round-robin balancer
    (each new connection to the next replica).
    Cross-tenant hits are exactly zero (a tenant's first request finds nothing, though
    others sent the same system prompt to the same replica before it) while the same
    tenant's later requests hit. (Under round-robin a Continuum client whose secret the
    other replica does not know registers a new one, so it becomes a new tenant there:
    round-robin loses its cache to the salt as well as to the replica.)"""
    urls = [f"http://127.0.0.1:{ports['http']}" for ports in fleet.replicas]
    with haproxy(urls, tmp_path) as url:
        before = [_chats(fleet, i) for i in range(2)]
        hinted = asyncio.run(_workload(url, hints=True))
        load = [_chats(fleet, i) - b for i, b in enumerate(before)]
    with _balancer(fleet, "http") as lb:
        plain = asyncio.run(_workload(f"http://127.0.0.1:{lb.port}", hints=False))
    assert all(turns[0][0] == 0 for turns in (*hinted.values(), *plain.values()))
    assert all(c > 0 for turns in hinted.values() for c, _ in turns[1:])
    affinity, round_robin = _hit_rate(hinted), _hit_rate(plain)
    ratio = f"{affinity / round_robin:.2f}x" if round_robin else "round-robin had none"
    print(f"\nprefix-cache hit rate: hint {affinity:.3f}, round-robin {round_robin:.3f} "
          f"({ratio}); chats per replica with hints {load} "
          f"({max(load) / (sum(load) / len(load)):.2f}x the mean)")
    assert affinity > round_robin
