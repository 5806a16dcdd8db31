"""Clients nobody here wrote, each completing a streamed chat against a served gateway
(simulated TEE, the deterministic test engine), unmodified, and each refusing what a relay
that flips one byte makes of the exchange, in either direction:

- the OpenAI Python SDK through `cloister proxy` (OHTTP, attestation checked by the proxy);
- Tinfoil's `tinfoil-ehbp` (Python; alone and as the OpenAI Python SDK's transport) and
  its npm `ehbp` (Node; alone and as the `fetch` of the OpenAI Node SDK), as Tinfoil
  documents them;
- Microsoft's `ohttpy` (Azure's OHTTP convention), as a process of its own;
- `atoma-sdk`, on the attested TLS listener with a platform key;
- a browser: an RFC 9458 chunked-OHTTP client on `hpke-js` and `bhttp-js` (npm), bundled by
  esbuild and run in Debian's headless Chromium from a page of another origin (CORS).

The Node packages come from `tests/js/package-lock.json` (`make env` runs `npm ci`)."""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ehbp as tinfoil
import httpx
import openai
import pytest
from atoma_sdk import AtomaSDK
from atoma_sdk import models as atoma_models
from playwright.sync_api import Browser
from starlette.applications import Starlette
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from attestation.simulated import SimulatedPki
from enclave.atoma.dialect import LOCK_PATH
from enclave.sealed_state import DataKey
from gateway.app import create_app
from gateway.config import ServeConfig
from gateway.platform_store import PlatformStore
from gateway.tls import make_tls_identity
from proxy.app import create_proxy_app
from proxy.attestor import Attestor
from proxy.dialects import make_client
from testkit.attested import simulated, trusting
from testkit.doubles import CHAT_MODEL, DeterministicTestEngine
from tests.served import served
from tests.tampering import ByteFlippingRelay
from tests.unit.gateway.test_platform import new_key

pytestmark = pytest.mark.slow  # outside processes or a browser: `-m "not slow"` skips it

ROOT = Path(__file__).resolve().parents[2]
JS = ROOT / "tests" / "js"
NODE = shutil.which("node") or "/usr/bin/node"
MESSAGES = [{"role": "user", "content": "hello"}]


@dataclass
class Served:
    url: str            # the public listener
    tls_url: str        # the attested TLS listener (Atoma with accounts)
    pinned: ssl.SSLContext
    api_key: str
    pki: SimulatedPki


@pytest.fixture(scope="module")
def gateway(tmp_path_factory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("outside-clients")
    pki = SimulatedPki.load_or_create(tmp / "pki")
    store = PlatformStore(f"sqlite:///{tmp / 'platform.db'}",
                          DataKey.from_key_file(tmp / "data-key"))
    identity = make_tls_identity(["127.0.0.1"])
    app = create_app(ServeConfig.of(), DeterministicTestEngine().running,  # type: ignore[arg-type]
                     attestation=simulated(pki), platform_store=store,
                     tls_spki_sha256=identity.spki_sha256)
    key, _ = new_key(store, "outside-clients", budget_tokens=1_000_000)
    pinned = ssl.create_default_context(cadata=identity.cert_pem.decode())
    with served(app) as url, served(app.tls_app, tls=identity) as tls_url:
        yield Served(url, tls_url, pinned, key, pki)


@pytest.fixture(scope="module")
def ohttp_page(tmp_path_factory) -> Iterator[str]:
    """A page of its own origin carrying the bundled browser OHTTP client."""
    bundle = tmp_path_factory.mktemp("bundle") / "ohttp.js"
    built = subprocess.run([str(JS / "node_modules" / ".bin" / "esbuild"),
                            "ohttp-browser.mjs", "--bundle", "--format=esm",
                            f"--outfile={bundle}"], cwd=JS, capture_output=True, text=True,
                           timeout=60)
    assert built.returncode == 0, built.stderr
    script = bundle.read_bytes()
    page = Starlette(routes=[
        Route("/", lambda r: HTMLResponse('<script type="module" src="/ohttp.js"></script>')),
        Route("/ohttp.js", lambda r: Response(script, media_type="text/javascript")),
    ])
    with served(page) as url:
        yield url


# --- each client: a streamed chat (and a whole one where it has both), True when served ----

class Refused(Exception):
    """The client did not complete the exchange (what it said, for the failure message)."""


def process(*command: str, cwd: Path | None = None) -> Callable[..., None]:
    """A client run as its own process: `command` then the URL and the model; it prints
    one JSON line with a whole answer and the text of a streamed one."""
    def run(served_: Served, url: str, **_: Any) -> None:
        done = subprocess.run([*command, url, CHAT_MODEL], cwd=cwd, capture_output=True,
                              text=True, timeout=60)
        line = json.loads(done.stdout.strip().splitlines()[-1]) if done.stdout.strip() else {}
        if done.returncode != 0 or not line.get("ok"):
            raise Refused(line or done.stderr[-500:])
        assert line["content"] and line["streamed"] == line["content"] and line["done"]
    return run


def node(mode: str) -> Callable[..., None]:
    return process(NODE, "ehbp-chat.mjs", mode, cwd=JS)


def browser_ohttp(served_: Served, url: str, *, browser: Browser, ohttp_page: str,
                  **_: Any) -> None:
    page = browser.new_page()
    try:
        page.goto(ohttp_page)
        page.wait_for_function("typeof window.ohttpChat === 'function'")
        try:
            answer = page.evaluate("([u, m]) => window.ohttpChat(u, m)", [url, CHAT_MODEL])
        except Exception as error:  # noqa: BLE001 - the page's own error, reported
            raise Refused(str(error)) from None
    finally:
        page.close()
    assert answer["status"] == 200 and answer["done"] and answer["streamed"]
    assert answer["chunks"] >= 2 and answer["incremental"] == "?1"


def tinfoil_python(served_: Served, url: str, **_: Any) -> None:
    try:
        with tinfoil.Client.discover(url) as client, client.stream(
                "POST", "/v1/chat/completions", json_body={
                    "model": CHAT_MODEL, "messages": MESSAGES, "max_tokens": 4,
                    "stream": True}) as answer:
            events = b"".join(answer.iter_bytes())
            status = answer.status_code
    except Exception as error:  # noqa: BLE001 - whichever error the client raises
        raise Refused(repr(error)) from None
    if status != 200:
        raise Refused(status)
    # the last event is [DONE]: comment events after it (the receipt) are skipped, as SSE
    # parsers skip them
    assert [e for e in events.split(b"\n\n") if e and not e.startswith(b":")][-1] == \
        b"data: [DONE]"


def openai_over_tinfoil(served_: Served, url: str, **_: Any) -> None:
    """The OpenAI Python SDK on Tinfoil's `EHBPTransport`, as Tinfoil documents it."""
    identity = tinfoil.ServerIdentity.unmarshal_public_config(
        httpx.get(f"{url}/.well-known/hpke-keys").content)
    with httpx.Client(transport=tinfoil.EHBPTransport(identity), timeout=60) as http:
        sdk = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", http_client=http,
                            max_retries=0)
        try:
            stream = sdk.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES,  # type: ignore[arg-type]
                                                 max_tokens=4, stream=True)
            text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        except Exception as error:  # noqa: BLE001 - whichever error the stack raises
            raise Refused(repr(error)) from None
    assert text


def atoma(served_: Served, url: str, **_: Any) -> None:
    sdk = AtomaSDK(bearer_auth=served_.api_key, server_url=url, timeout_ms=60_000,
                   client=httpx.Client(verify=served_.pinned, timeout=60))
    messages = [atoma_models.ChatCompletionMessage(role="user", content="hello")]
    try:
        chunks = list(sdk.confidential_chat.create_stream(model=CHAT_MODEL, max_tokens=4,
                                                          messages=messages))
    except Exception as error:  # noqa: BLE001
        raise Refused(repr(error)) from None
    assert "".join(c.data.choices[0].delta.content or "" for c in chunks)


def openai_through_proxy(served_: Served, url: str, **_: Any) -> None:
    client = make_client(url, "ohttp",
                         attestation=Attestor(url, trust=trusting(served_.pki)))
    with served(create_proxy_app(client)) as proxy_url:
        sdk = openai.OpenAI(base_url=f"{proxy_url}/v1", api_key="unused", max_retries=0)
        try:
            stream = sdk.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES,  # type: ignore[arg-type]
                                                 max_tokens=4, stream=True)
            text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        except openai.APIError as error:
            raise Refused(repr(error)) from None
    assert text


CLIENTS: dict[str, tuple[Callable[..., None], bool]] = {
    # name: (runner, served on the attested TLS listener: Atoma with accounts)
    "openai-python-through-cloister-proxy": (openai_through_proxy, False),
    "tinfoil-ehbp-python": (tinfoil_python, False),
    "openai-python-over-tinfoil-transport": (openai_over_tinfoil, False),
    "ehbp-node": (node("ehbp"), False),
    "openai-node-over-ehbp": (node("openai"), False),
    "atoma-sdk": (atoma, True),
    "ohttpy-azure-convention": (process(sys.executable, "-m", "tests.ohttpy_chat",
                                        cwd=ROOT), False),
    "browser-hpke-js-bhttp-js-ohttp": (browser_ohttp, False),
}


def _run(name: str, gateway: Served, url: str, request: pytest.FixtureRequest) -> None:
    runner, _ = CLIENTS[name]
    extra = ({"browser": request.getfixturevalue("browser"),
              "ohttp_page": request.getfixturevalue("ohttp_page")}
             if runner is browser_ohttp else {})
    runner(gateway, url, **extra)


@pytest.mark.parametrize("name", list(CLIENTS))
def test_an_outside_client_completes_a_streamed_chat(name, gateway, request) -> None:
    _, tls = CLIENTS[name]
    _run(name, gateway, gateway.tls_url if tls else gateway.url, request)


@pytest.mark.parametrize("direction", ["request", "response"])
@pytest.mark.parametrize("name", list(CLIENTS))
def test_an_outside_client_refuses_a_flipped_byte(name, direction, gateway, request) -> None:
    _, tls = CLIENTS[name]
    relay = ByteFlippingRelay(gateway.tls_url if tls else gateway.url, direction,
                              verify=gateway.pinned if tls else True,
                              untouched=frozenset({LOCK_PATH}))
    with served(relay) as relayed, pytest.raises(Refused):
        _run(name, gateway, relayed, request)
    assert relay.flipped >= 1  # the relay did change what crossed
