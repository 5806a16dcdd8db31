"""`cloister admin ...`: administer a gateway through its attested TLS listener.

    cloister admin keygen --out admin.key               # once; admin.key.pub to the deploy
    cloister admin --gateway https://HOST:8443 --key admin.key --release-key REL.pub \\
        accounts create NAME | accounts list
        keys create --account ID --name NAME [--budget-tokens N] | keys list [--account ID]
        keys revoke KEY_ID | keys budget KEY_ID (N | none)
        chatbots create --account ID --name NAME --model MODEL --system-prompt TEXT
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from proxy.admin_client import AdminClient, AdminError, attested_tls
from proxy.errors import GatewayNotAttested


def add_parser(sub: Any, add_trust_arguments: Any) -> None:
    admin = sub.add_parser("admin", help="administer a gateway (accounts, keys, budgets, "
                                         "chatbots) through its attested TLS listener")
    admin.add_argument("--gateway", help="the gateway's https:// (attested TLS) URL")
    admin.add_argument("--key", type=Path, help="the admin private key (`admin keygen`)")
    add_trust_arguments(admin)
    what = admin.add_subparsers(dest="resource", required=True)
    keygen = what.add_parser("keygen", help="make the admin key pair")
    keygen.add_argument("--out", type=Path, required=True)
    accounts = what.add_parser("accounts").add_subparsers(dest="action", required=True)
    accounts.add_parser("create").add_argument("name")
    accounts.add_parser("list")
    keys = what.add_parser("keys").add_subparsers(dest="action", required=True)
    create = keys.add_parser("create")
    create.add_argument("--account", required=True)
    create.add_argument("--name", required=True)
    create.add_argument("--budget-tokens", type=int, default=None)
    keys.add_parser("list").add_argument("--account", default=None)
    keys.add_parser("revoke").add_argument("key_id")
    budget = keys.add_parser("budget")
    budget.add_argument("key_id")
    budget.add_argument("tokens", help="a number of tokens, or none")
    bots = what.add_parser("chatbots").add_subparsers(dest="action", required=True)
    bot = bots.add_parser("create")
    for flag in ("--account", "--name", "--model", "--system-prompt"):
        bot.add_argument(flag, required=True)
    bot.add_argument("--description", default="")


def _keygen(out: Path) -> int:
    key = ed25519.Ed25519PrivateKey.generate()
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key.private_bytes(serialization.Encoding.PEM,
                                   serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()))
    out.with_name(out.name + ".pub").write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    print(f"{out} (private, 0600) and {out}.pub (for `cloister serve --admin-public-key`)")
    return 0


def _request(args: argparse.Namespace) -> tuple[str, str, dict[str, Any] | None,
                                                dict[str, str] | None]:
    if args.resource == "accounts":
        return (("POST", "/admin/v1/accounts", {"name": args.name}, None)
                if args.action == "create" else ("GET", "/admin/v1/accounts", None, None))
    if args.resource == "chatbots":
        return ("POST", "/admin/v1/chatbots", {
            "account_id": args.account, "name": args.name, "model": args.model,
            "system_prompt": args.system_prompt, "description": args.description}, None)
    if args.action == "create":
        return ("POST", "/admin/v1/keys", {"account_id": args.account, "name": args.name,
                                           "budget_tokens": args.budget_tokens}, None)
    if args.action == "list":
        return ("GET", "/admin/v1/keys", None,
                {"account_id": args.account} if args.account else None)
    if args.action == "revoke":
        return "POST", f"/admin/v1/keys/{args.key_id}/revoke", {}, None
    tokens = None if args.tokens == "none" else int(args.tokens)
    return "POST", f"/admin/v1/keys/{args.key_id}/budget", {"budget_tokens": tokens}, None


def run(args: argparse.Namespace, trust: Any, statements: Any) -> int:
    if args.resource == "keygen":
        return _keygen(args.out)
    if not args.gateway or not args.key:
        print("cloister admin: --gateway and --key are required", file=sys.stderr)
        return 2
    key = serialization.load_pem_private_key(args.key.read_bytes(), None)
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        print("cloister admin: --key must be an Ed25519 private key", file=sys.stderr)
        return 2
    method, path, body, params = _request(args)

    async def go() -> Any:
        tls = await attested_tls(args.gateway, trust=trust, key=key, statements=statements)
        client = AdminClient(args.gateway, key, tls)
        try:
            return await client.call(method, path, body, params)
        finally:
            await client.aclose()

    try:
        print(json.dumps(asyncio.run(go()), indent=2))
    except GatewayNotAttested as exc:
        print(f"NOT VERIFIED: {exc}", file=sys.stderr)
        return 1
    except AdminError as exc:
        print(f"cloister admin: {exc}", file=sys.stderr)
        return 1
    return 0
