"""Interactive documentation of the platform API (seed 002 promises it at `/api/v1/docs`),
on the TLS listener only, next to the API it documents.

    GET /api/v1/openapi.json      the OpenAPI 3.0 document (what the packaged Swagger UI
                                  4.15 renders)
    GET /api/v1/docs              Swagger UI, its assets served from the packaged
    GET /api/v1/docs/assets/...   `swagger-ui-bundle` distribution (the gateway has no
                                  outbound network: no CDN)

The document is written here, route by route, because the engine endpoints are ASGI
apps that no schema generator can read; `tests/unit/gateway/test_platform_docs.py` fails when a
route of `Platform.routes()` is missing from it (or documented but not served).
"""

from __future__ import annotations

from typing import Any

import swagger_ui_bundle
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from enclave.wire_errors import ErrorCode

PREFIX = "/api/v1"
DOCS_PATH = f"{PREFIX}/docs"
OPENAPI_PATH = f"{PREFIX}/openapi.json"
ASSETS_PATH = f"{DOCS_PATH}/assets"
# Everything the page loads is its own; inline styles are Swagger UI's.
SECURITY_HEADERS = {
    "content-security-policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; "
                               "img-src 'self' data:",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Any]:
    names = {400: "Invalid request", 401: "Missing, unknown or revoked API key",
             402: "Budget exhausted", 404: "Not found", 409: "Conflict",
             413: "Body too large", 429: "Too many requests", 503: "Not ready or overloaded"}
    return {str(s): _json(_ref("Error"), names[s]) for s in statuses}


def _engine_call(summary: str, request_schema: str, description: str) -> dict[str, Any]:
    return {
        "summary": summary, "description": description,
        "requestBody": {"required": True, "content": {"application/json": {
            "schema": _ref(request_schema)}}},
        "responses": {
            "200": {"description": "The engine's answer (`text/event-stream` when "
                                   "`stream` is true)",
                    "content": {"application/json": {"schema": {"type": "object"}},
                                "text/event-stream": {"schema": {"type": "string"}}}},
            **_errors(400, 401, 402, 413, 429, 503)},
    }


def _read(summary: str, schema: str, *statuses: int) -> dict[str, Any]:
    return {"summary": summary, "responses": {"200": _json(_ref(schema), summary),
                                              **_errors(401, *statuses)}}


CHATBOT_ID = {"name": "chatbot_id", "in": "path", "required": True,
              "schema": {"type": "string"}}

PATHS: dict[str, dict[str, Any]] = {
    f"{PREFIX}/models": {"get": _read("The models this gateway serves", "ModelList")},
    f"{PREFIX}/chat/completions": {"post": _engine_call(
        "Chat completion", "ChatCompletionRequest",
        "OpenAI's chat completions; the cost is reserved against the key's budget first "
        "and settled to the real usage.")},
    f"{PREFIX}/completions": {"post": _engine_call(
        "Text completion", "CompletionRequest", "OpenAI's (legacy) completions.")},
    f"{PREFIX}/embeddings": {"post": _engine_call(
        "Embeddings", "EmbeddingRequest", "OpenAI's embeddings.")},
    f"{PREFIX}/usage": {"get": _read("The key's usage", "Usage")},
    f"{PREFIX}/budget/status": {"get": _read("The key's budget", "BudgetStatus")},
    f"{PREFIX}/chatbot/list": {"get": _read("The account's chatbots", "ChatbotList")},
    f"{PREFIX}/chatbot/external/{{chatbot_id}}/chat": {"post": {
        "summary": "One turn of a stored conversation with a chatbot",
        "parameters": [CHATBOT_ID],
        "requestBody": {"required": True, "content": {"application/json": {
            "schema": _ref("ChatbotMessage")}}},
        "responses": {"200": _json(_ref("ChatbotReply"), "The chatbot's reply"),
                      **_errors(400, 401, 402, 404, 429, 503)}}},
    f"{PREFIX}/chatbot/external/{{chatbot_id}}/chat/completions": {"post": {
        **_engine_call("OpenAI chat completions with a chatbot's model and system prompt",
                       "ChatCompletionRequest", "The chatbot's system prompt goes first; "
                       "its model replaces the one named."),
        "parameters": [CHATBOT_ID]}},
}

_MESSAGE = {"type": "object", "required": ["role", "content"],
            "properties": {"role": {"type": "string",
                                    "enum": ["system", "user", "assistant", "tool"]},
                           "content": {"type": "string"}}}
SCHEMAS: dict[str, Any] = {
    "Error": {"type": "object", "required": ["error"], "properties": {"error": {
        "type": "object", "required": ["message", "type", "code"], "properties": {
            "message": {"type": "string"}, "type": {"type": "string"},
            "code": {"type": "string", "enum": sorted(c.value for c in ErrorCode)},
            "param": {"type": "string", "nullable": True}}}}},
    "ChatCompletionRequest": {"type": "object", "required": ["model", "messages"],
                              "properties": {
        "model": {"type": "string"}, "messages": {"type": "array", "items": _MESSAGE},
        "max_tokens": {"type": "integer", "minimum": 1},
        "temperature": {"type": "number"}, "stream": {"type": "boolean"}}},
    "CompletionRequest": {"type": "object", "required": ["model", "prompt"], "properties": {
        "model": {"type": "string"}, "prompt": {"type": "string"},
        "max_tokens": {"type": "integer", "minimum": 1}, "stream": {"type": "boolean"}}},
    "EmbeddingRequest": {"type": "object", "required": ["model", "input"], "properties": {
        "model": {"type": "string"},
        "input": {"oneOf": [{"type": "string"},
                            {"type": "array", "items": {"type": "string"}}]}}},
    "ModelList": {"type": "object", "properties": {
        "object": {"type": "string", "enum": ["list"]}, "data": {"type": "array", "items": {
            "type": "object", "properties": {"id": {"type": "string"}}}}}},
    "Usage": {"type": "object", "properties": {
        "api_key": {"type": "object", "properties": {
            "id": {"type": "string"}, "name": {"type": "string"},
            "prefix": {"type": "string"}}},
        "usage": {"type": "object", "properties": {
            "total_tokens": {"type": "integer"}, "requests": {"type": "integer"}}}}},
    "BudgetStatus": {"type": "object", "properties": {
        "budget_tokens": {"type": "integer", "nullable": True},
        "used_tokens": {"type": "integer"},
        "remaining_tokens": {"type": "integer", "nullable": True},
        "exhausted": {"type": "boolean"}}},
    "ChatbotList": {"type": "object", "properties": {"chatbots": {"type": "array", "items": {
        "type": "object", "properties": {
            "id": {"type": "string"}, "name": {"type": "string"},
            "type": {"type": "string", "enum": ["chatbot"]}, "model": {"type": "string"},
            "description": {"type": "string", "nullable": True},
            "created_at": {"type": "string", "format": "date-time"}}}}}},
    "ChatbotMessage": {"type": "object", "required": ["message"], "properties": {
        "message": {"type": "string", "minLength": 1},
        "conversation_id": {"type": "string"}}},
    "ChatbotReply": {"type": "object", "properties": {
        "conversation_id": {"type": "string"}, "response": {"type": "string"},
        "timestamp": {"type": "string", "format": "date-time"}}},
}


def openapi_document(version: str) -> dict[str, Any]:
    return {
        "openapi": "3.0.3",
        "info": {"title": "Cloister platform API", "version": version,
                 "description": "The Enclava-compatible platform API, served only on the "
                                "gateway's attested TLS listener. Authenticate with "
                                "`Authorization: Bearer <API key>`."},
        "servers": [{"url": "/"}],
        "components": {"schemas": SCHEMAS, "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{"bearer": []}],
        "paths": PATHS,
    }


PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Cloister platform API</title>
<link rel="stylesheet" href="{assets}/swagger-ui.css">
</head>
<body>
<div id="swagger-ui"></div>
<script src="{assets}/swagger-ui-bundle.js"></script>
<script src="{docs}/init.js"></script>
</body>
</html>
"""
INIT_JS = """window.ui = SwaggerUIBundle({url: "%s", dom_id: "#swagger-ui",
  deepLinking: true, presets: [SwaggerUIBundle.presets.apis]});
"""


def docs_routes(version: str) -> list[BaseRoute]:
    document = openapi_document(version)

    async def openapi(request: Request) -> Response:
        return JSONResponse(document)

    async def page(request: Request) -> Response:
        return HTMLResponse(PAGE.format(assets=ASSETS_PATH, docs=DOCS_PATH),
                            headers=SECURITY_HEADERS)

    async def init(request: Request) -> Response:
        return Response(INIT_JS % OPENAPI_PATH, media_type="text/javascript",
                        headers=SECURITY_HEADERS)

    return [
        Route(OPENAPI_PATH, openapi, methods=["GET"]),
        Route(DOCS_PATH, page, methods=["GET"]),
        Route(f"{DOCS_PATH}/init.js", init, methods=["GET"]),
        Mount(ASSETS_PATH, app=StaticFiles(directory=swagger_ui_bundle.swagger_ui_path)),
    ]
