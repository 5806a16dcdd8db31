"""`cloister serve --workers 2` for real: two gateway processes in front of one real vLLM
engine core (vLLM's multi-API-server machinery). Clients verify either worker against
the operator's signed release, both publish the same keys, a request one worker answered
is refused by the other, the metrics add up over both, and when the engine core dies the
whole gateway exits non-zero with no process left behind."""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import (
    RunningGateway,
    cloister,
    listener_args,
    sign_release,
    start_gateway,
    stop_gateway,
)
from tests.integration.test_engine_death import _descendants, _engine_core
from tests.waiting import wait_until

pytestmark = pytest.mark.engine
MODEL = "cloister-demo"
HELD_OPEN = 6  # connections open at once: the least loaded worker accepts each


@pytest.fixture(scope="module")
def workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    folder = tmp_path_factory.mktemp("workers")
    args = [*listener_args(), "--attestation", "simulated", "--embedding-model", "none",
            "--workers", "2"]
    statement, public_key = sign_release(args, folder)
    started = time.monotonic()
    running = start_gateway(*args, "--reference-values", str(statement),
                            log_path=folder / "gateway.log", state_dir=folder / "state")
    print(f"\ntwo workers ready {time.monotonic() - started:.1f}s after start")
    running.release_key = public_key
    yield running
    stop_gateway(running)


def _worker_of(gateway: RunningGateway) -> dict[str, int]:
    """Which worker answered each request (by request id), from the gateway's log."""
    answered = {}
    for line in gateway.log_path.read_text(errors="replace").splitlines():
        if '"request_id"' in line and '"worker"' in line and line.startswith("{"):
            record = json.loads(line)
            if record.get("event") == "request":
                answered[record["request_id"]] = record["worker"]
    return answered


def _held_open(gateway: RunningGateway, path: str, *, tls: bool = False
               ) -> list[httpx.Response]:
    """`HELD_OPEN` GETs of `path`, each on its own connection, all open at once; over
    TLS, each answer's `certificate` is the one its connection was served with."""
    clients = [httpx.Client(base_url=gateway.tls_url if tls else gateway.url, timeout=30,
                            verify=False) for _ in range(HELD_OPEN)]

    def get(client: httpx.Client) -> httpx.Response:
        answer = client.get(path)
        if tls:
            answer.certificate = (answer.extensions["network_stream"]  # type: ignore[attr-defined]
                                  .get_extra_info("ssl_object").getpeercert(True))
        return answer

    try:
        with ThreadPoolExecutor(HELD_OPEN) as pool:
            return list(pool.map(get, clients))
    finally:
        for each in clients:
            each.close()


BURSTS = 20  # on a loaded machine one worker may accept a whole burst: try again


def _held_open_by_both(gateway: RunningGateway, path: str, *, tls: bool = False
                       ) -> list[httpx.Response]:
    """Bursts of `_held_open` until both workers have answered some (the least loaded
    worker accepts each connection, and under load one may take a whole burst); every
    answer of every burst."""
    answers: list[httpx.Response] = []
    for _ in range(BURSTS):
        answers += _held_open(gateway, path, tls=tls)
        if set(_answered_by(gateway, answers)) == {0, 1}:
            break
    return answers


def _answered_by(gateway: RunningGateway, responses: list[httpx.Response]) -> Counter[int]:
    # A worker writes a request's access line as the answer completes, so the client can
    # read the answer before the line is there.
    ids = [r.headers["x-request-id"] for r in responses]
    workers = wait_until(lambda: _worker_of(gateway), lambda logged: all(i in logged for i in ids))
    return Counter(workers[i] for i in ids)


def test_every_worker_publishes_the_same_attested_keys(workers) -> None:
    from enclave import atoma, continuum, ehbp
    from enclave.ohttp.dialect import PATH as OHTTP_PATH

    answers = []
    for path in (ehbp.KEYS_PATH, OHTTP_PATH, atoma.NODE_PATH, continuum.HYBRID_KEY_PATH):
        published = _held_open_by_both(workers, path)
        assert {a.status_code for a in published} == {200}
        assert len({a.content for a in published}) == 1, path
        assert set(_answered_by(workers, published)) == {0, 1}, path
        answers += published


def test_every_worker_serves_the_same_attested_tls_certificate(workers) -> None:
    """One TLS key for all workers (derived from the seed), so the certificate a client
    pinned from the report is the one any worker presents."""
    answers = _held_open_by_both(workers, "/health", tls=True)
    certificates = {a.certificate for a in answers}  # type: ignore[attr-defined]
    assert len(certificates) == 1 and None not in certificates
    assert set(_answered_by(workers, answers)) == {0, 1}


def test_the_sdk_verifies_and_chats_through_either_worker(workers, tmp_path) -> None:
    from proxy.transport import openai_client

    state = tmp_path / "client"

    def chat(i: int) -> str:
        sdk = openai_client(workers.url, protocol="ohttp" if i % 2 else "ehbp",
                            release_keys=[workers.release_key],
                            simulated_roots=workers.simulated_roots,
                            state_dir=state)
        answer = sdk.chat.completions.create(
            model=MODEL, max_tokens=4, messages=[{"role": "user", "content": f"hi {i}"}])
        streamed = sdk.chat.completions.create(
            model=MODEL, max_tokens=4, stream=True,
            messages=[{"role": "user", "content": f"again {i}"}])
        pieces = [c.choices[0].delta.content or "" for c in streamed if c.choices]
        return (answer.choices[0].message.content or "") + "".join(pieces)

    before = Counter(_worker_of(workers).values())
    served: Counter[int] = Counter()
    for _ in range(5):  # rounds until both served: under load one may take a whole round
        enough = sum(served.values()) + 2 * HELD_OPEN  # each chat asks twice
        with ThreadPoolExecutor(HELD_OPEN) as pool:
            texts = list(pool.map(chat, range(HELD_OPEN)))
        assert all(texts)
        served = wait_until(lambda: Counter(_worker_of(workers).values()) - before,
                            lambda served, enough=enough: sum(served.values()) >= enough)
        if served[0] > 0 and served[1] > 0:
            break
    assert served[0] > 0 and served[1] > 0, served


def test_a_request_one_worker_answered_is_refused_by_the_other(workers) -> None:
    from tests.integration.test_side_channels import answered_ehbp_request, replay_headers

    captured = answered_ehbp_request(workers.url)
    headers = replay_headers(captured)
    replays: list[httpx.Response] = []
    for _ in range(BURSTS):  # until both workers have refused some
        clients = [httpx.Client(base_url=workers.url, timeout=60) for _ in range(HELD_OPEN)]
        try:
            with ThreadPoolExecutor(HELD_OPEN) as pool:
                replays += pool.map(lambda c: c.post(captured.url.path,
                                                     content=captured.content,
                                                     headers=headers), clients)
        finally:
            for each in clients:
                each.close()
        if set(_answered_by(workers, replays)) == {0, 1}:
            break
    assert {r.status_code for r in replays} == {409}
    assert set(_answered_by(workers, replays)) == {0, 1}


def test_the_metrics_add_up_over_the_workers(workers) -> None:
    def health_200() -> float:
        text = httpx.get(f"{workers.metrics_url}/metrics").text
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("cloister_requests_total{") and 'route="/health"' in line
                   and 'status="200"' in line)

    before = health_200()
    answers = _held_open_by_both(workers, "/health")
    assert set(_answered_by(workers, answers)) == {0, 1}
    assert health_200() - before == len(answers)


def test_the_number_of_workers_is_not_part_of_the_workload(workers) -> None:
    """Same code, model and security settings at any N: one signed release covers them."""
    args = list(workers.serve_args)
    at = args.index("--workers")
    single = [*args[:at], *args[at + 2:]]
    digests = {cloister("workload", "--digest-only", *each).stdout.strip()
               for each in (args, single, [*single, "--workers", "8"])}
    assert len(digests) == 1 and "" not in digests


def test_when_the_engine_core_dies_the_gateway_exits_non_zero(workers) -> None:
    """Last in this module: it takes the gateway down."""
    processes = _descendants(workers.process.pid)
    assert len(processes) >= 3  # two workers and the engine core (and vLLM's helpers)
    os.kill(_engine_core(workers.process.pid), signal.SIGKILL)
    assert workers.process.wait(timeout=120) != 0
    # no process outlives the gateway: it stops them all before it exits (the engine
    # core's own workers included, orphaned when the core was killed)
    left = [pid for pid in processes if Path(f"/proc/{pid}").exists()
            and "zombie" not in _state(pid)]
    assert left == []


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split("\n")[0]
    except (OSError, IndexError):
        return "zombie"

