"""The balancer configurations we ship (deploy/balancers/), run by the real HAProxy and
nginx in front of two gateway replicas that share a fleet's keys: one user's requests
with one prompt prefix land on one replica (where its prefix cache is), users spread over
both, and requests without a hint are balanced round-robin. The engine is the
deterministic test double: what is tested is the routing, not a model."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from enclave.fleet import SEED_SIZE, FleetSecrets
from enclave.route_hint import RouteHint, user_key
from gateway.app import create_app
from gateway.config import ServeConfig
from proxy.attestor import Unverified
from proxy.dialects import make_client
from testkit.doubles import DeterministicTestEngine
from tests.served import served
from tests.shipped_balancers import haproxy, nginx
from tests.waiting import wait_until

pytestmark = pytest.mark.slow  # outside processes
SYSTEM = {"role": "system", "content": "You are the help desk of a bank. " * 40}


def _counted(app: Any, served_by: Counter[str], name: str) -> Any:
    """`app`, counting the sealed requests it serves under `name`."""
    async def asgi(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            served_by[name] += 1
        await app(scope, receive, send)
    return asgi


@pytest.fixture(scope="module")
def replicas() -> Iterator[tuple[list[str], Counter[str]]]:
    seed = os.urandom(SEED_SIZE)
    served_by: Counter[str] = Counter()
    with contextlib.ExitStack() as stack:
        urls = []
        for name in ("replica-0", "replica-1"):
            app = create_app(ServeConfig.of(), DeterministicTestEngine().running,
                             fleet=FleetSecrets(seed))
            urls.append(stack.enter_context(served(_counted(app, served_by, name))))
        for url in urls:
            assert wait_until(lambda url=url: httpx.get(f"{url}/ready").status_code,
                              lambda status: status == 200) == 200
        yield urls, served_by


async def _chats(url: str, hint: RouteHint | None, questions: int) -> None:
    client = make_client(url, "ohttp", attestation=Unverified(), route_hint=hint)
    try:
        for index in range(questions):
            body = json.dumps({"model": "test-chat", "max_tokens": 2, "messages": [
                SYSTEM, {"role": "user", "content": f"question {index}"}]}).encode()
            answer = await client.request("POST", "/v1/chat/completions", body)
            assert answer.status == 200
    finally:
        await client.aclose()


@pytest.mark.parametrize("balancer", [haproxy, nginx])
def test_one_users_prefix_stays_on_one_replica_and_users_spread(balancer, replicas,
                                                                 tmp_path) -> None:
    urls, served_by = replicas
    with balancer(urls, tmp_path) as url:
        where: dict[int, set[str]] = {}
        for user in range(12):
            before = Counter(served_by)
            asyncio.run(_chats(url, RouteHint(user_key(f"sk-user-{user}".encode())), 4))
            where[user] = {name for name in served_by if served_by[name] > before[name]}
        assert all(len(names) == 1 for names in where.values()), where
        assert set().union(*where.values()) == {"replica-0", "replica-1"}, where
        before = Counter(served_by)
        asyncio.run(_chats(url, None, 8))  # no hint: round-robin
        assert all(served_by[name] > before[name] for name in ("replica-0", "replica-1"))
