"""`cloister proxy`'s page for a person: at `/`, what was verified of each gateway
(platform, measurement, workload digest and models, GPUs, the reference-values statement
and its signer, key ids, expiry, last attestation) and a small chat box that goes through
the proxy itself. Only verified claims are shown (`proxy.report.as_json`); a gateway not
verified yet says so. Everything is served from here (no CDN, no inline script)."""

from __future__ import annotations

import datetime as dt
import html
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from proxy.report import as_json

SECURITY_HEADERS = {
    "content-security-policy": "default-src 'self'; style-src 'self'",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
}


def _iso(stamp: float) -> str:
    return dt.datetime.fromtimestamp(stamp, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def gateway_status(client: Any) -> dict[str, Any]:
    """One gateway client's verified state, for the page and `/status.json`."""
    attestation = client.attestation
    claims = attestation.last
    status: dict[str, Any] = {"gateway": client.gateway_url, "dialect": client.keys.name,
                              "verified": claims is not None}
    if claims is not None:
        status.update(as_json(claims, attestation.last_statement))
        status["last_attested"] = _iso(attestation.verified_at)
        status["generated_at"] = _iso(claims.generated_at)
        status["expires_at"] = _iso(claims.expires_at)
    return status


def _rows(status: dict[str, Any]) -> list[tuple[str, str]]:
    if not status["verified"]:
        return [("state", "not verified yet: it is attested before the first request")]
    statement = status["reference_values"]
    signed = (f"v{statement['version']} sha256:{statement['digest']} signed by "
              f"{statement['signer']}" if isinstance(statement, dict) else str(statement))
    models = "; ".join(f"{m['role']} {m['name']} {m['digest']}" for m in status["models"])
    gpus = "; ".join(f"driver {g['driver']} VBIOS {g['vbios']} mode {g['mode']}"
                     for g in status["gpus"]) or "none"
    return [("platform", status["platform"]), ("measurement", status["measurement"]),
            ("TCB", f"{status['tcb']} ({status['tcb_status']})"),
            ("workload digest", status["workload_digest"]), ("models", models),
            ("GPUs", gpus), ("reference values", signed),
            ("keys", ", ".join(status["keys"])),
            ("OHTTP key ids", ", ".join(map(str, status["ohttp_key_ids"])) or "none"),
            ("keys expire", status["expires_at"]), ("last attested", status["last_attested"])]


def render(statuses: list[dict[str, Any]]) -> str:
    sections = []
    for status in statuses:
        rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
                       for k, v in _rows(status))
        state = "verified" if status["verified"] else "unverified"
        sections.append(
            f'<section class="gateway {state}"><h2>{html.escape(status["gateway"])} '
            f'<span class="badge">{state}</span> <small>{html.escape(status["dialect"])}'
            f"</small></h2><table>{rows}</table></section>")
    return PAGE.format(gateways="".join(sections))


PAGE = """<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>Cloister proxy</title>
<link rel="stylesheet" href="/status.css"></head>
<body>
<h1>Cloister proxy</h1>
<p>Requests to this proxy are sealed to a gateway only after its attestation verified:</p>
{gateways}
<h2>Chat through the proxy</h2>
<form id="chat"><input id="prompt" name="prompt" autocomplete="off" placeholder="Say something"
 required><button type="submit">Send</button></form>
<pre id="answer" aria-live="polite"></pre>
<script src="/status.js"></script>
</body></html>
"""
CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:70em}
table{border-collapse:collapse;margin-bottom:1em}th{text-align:left;padding-right:1em}
td{font-family:monospace;word-break:break-all}.badge{font-size:.6em;padding:.2em .5em;
border-radius:.3em;color:#fff;background:#b00}.verified .badge{background:#070}
#answer{white-space:pre-wrap;background:#f4f4f4;padding:1em;min-height:2em}
"""
JS = """document.getElementById("chat").addEventListener("submit", async (event) => {
  event.preventDefault();
  const answer = document.getElementById("answer");
  answer.textContent = "...";
  const prompt = document.getElementById("prompt").value;
  try {
    const r = await fetch("/v1/chat/completions", {method: "POST",
      headers: {"content-type": "application/json"},
      body: JSON.stringify({model: "latest", max_tokens: 64,
                            messages: [{role: "user", content: prompt}]})});
    const body = await r.json();
    answer.textContent = r.ok ? body.choices[0].message.content
                              : "error " + r.status + ": " + body.error.code;
    answer.dataset.done = r.ok ? "ok" : "error";
  } catch (err) {
    answer.textContent = "the proxy did not answer";
    answer.dataset.done = "error";
  }
});
"""


async def _page(request: Request) -> Response:
    statuses = [gateway_status(c) for c in request.app.state.client.gateways()]
    return HTMLResponse(render(statuses), headers=SECURITY_HEADERS)


async def _status_json(request: Request) -> Response:
    return JSONResponse([gateway_status(c) for c in request.app.state.client.gateways()])


def _static(body: str, media_type: str) -> Any:
    async def serve(request: Request) -> Response:
        return Response(body, media_type=media_type, headers=SECURITY_HEADERS)
    return serve


def routes() -> list[Route]:
    return [Route("/", _page, methods=["GET"]),
            Route("/status.json", _status_json, methods=["GET"]),
            Route("/status.css", _static(CSS, "text/css"), methods=["GET"]),
            Route("/status.js", _static(JS, "text/javascript"), methods=["GET"])]
