"""The Enclava platform's state: accounts, API keys and budgets, chatbots, conversations,
in a database the operator runs and the enclave does not trust.

SQLAlchemy Core over SQLite by default (a file in the state folder), or any URL
SQLAlchemy understands (PostgreSQL for several replicas). Every row that matters is
authenticated by the enclave under its data key (`enclave.sealed_state`):

    accounts       MAC over id, name, created_at, version, the digest of the MACs of
                   the account's API-key rows (so a key row restored from an older copy,
                   or inserted, does not match its account), and the digest of the MACs
                   of its conversation rows (so an older conversation row, put back with
                   the messages after it deleted, does not match either)
    api_keys       MAC over id, account, name, lookup, key hash, created, revoked,
                   budget, used, reserved, requests
    chatbots       MAC over id, account, name, model, description, created, and the
                   sealed system prompt (AAD: chatbot id and account)
    conversations  MAC over id, account, chatbot, API key, created, message count
    messages       AEAD with AAD naming the conversation, position and role: a message
                   moved, re-ordered or given another role does not open

A row that fails is `StateInvalid` (`500 stored_state_invalid`), never used. Rollback:
each account's version grows with every change and the process remembers the highest
it has seen; an account row older than that is `StateRolledBack`. A whole database
restored before this process started, consistent with itself, cannot be told apart
without monotonic storage outside the operator's reach (see the note in issue 16).

Budgets hold under concurrency: a request reserves its maximum cost before the engine
is called (`reserve`) and settles to its real usage afterwards (`settle`), both in one
write transaction under a lock (`SELECT ... FOR UPDATE` where the database has it).
API keys are 256-bit random and stored only as SHA-256 hashes, compared in constant
time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
import structlog

from enclave.errors import DecryptError
from enclave.sealed_state import DataKey
from enclave.wire_errors import ErrorCode
from gateway.database import create_schema, open_database

log = structlog.get_logger("cloister.store")

KEY_PREFIX = "clst_"
# Characters of a key kept in clear to find its row (the rest is only hashed).
LOOKUP_CHARS = 12

metadata = sa.MetaData()
accounts = sa.Table(
    "accounts", metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("version", sa.BigInteger, nullable=False),
    sa.Column("keys_digest", sa.LargeBinary(32), nullable=False),
    sa.Column("mac", sa.LargeBinary(32), nullable=False),
    # None: the account has no conversations (and rows from before this column)
    sa.Column("conversations_digest", sa.LargeBinary(32), nullable=True),
)
api_keys = sa.Table(
    "api_keys", metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("account_id", sa.String(32), sa.ForeignKey("accounts.id"), nullable=False,
              index=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("lookup", sa.String(LOOKUP_CHARS), nullable=False, index=True),
    sa.Column("key_hash", sa.LargeBinary(32), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("revoked_at", sa.Float),
    sa.Column("budget_tokens", sa.BigInteger),
    sa.Column("used_tokens", sa.BigInteger, nullable=False),
    sa.Column("reserved_tokens", sa.BigInteger, nullable=False),
    sa.Column("requests", sa.BigInteger, nullable=False),
    sa.Column("mac", sa.LargeBinary(32), nullable=False),
)
chatbots = sa.Table(
    "chatbots", metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("account_id", sa.String(32), sa.ForeignKey("accounts.id"), nullable=False),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("model", sa.String(200), nullable=False),
    sa.Column("description", sa.String(500), nullable=False),
    sa.Column("system_prompt", sa.LargeBinary, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("mac", sa.LargeBinary(32), nullable=False),
)
conversations = sa.Table(
    "conversations", metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("account_id", sa.String(32), sa.ForeignKey("accounts.id"), nullable=False),
    sa.Column("chatbot_id", sa.String(32), sa.ForeignKey("chatbots.id"), nullable=False),
    sa.Column("api_key_id", sa.String(32), sa.ForeignKey("api_keys.id"), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("message_count", sa.Integer, nullable=False),
    sa.Column("mac", sa.LargeBinary(32), nullable=False),
)
messages = sa.Table(
    "messages", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("conversation_id", sa.String(32), sa.ForeignKey("conversations.id"),
              nullable=False, index=True),
    sa.Column("position", sa.Integer, nullable=False),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("content", sa.LargeBinary, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)


class StoreError(Exception):
    code: ErrorCode = ErrorCode.STATE_INVALID
    message = "the stored state failed to authenticate"

    def __init__(self, message: str | None = None) -> None:
        self.message = message or type(self).message
        super().__init__(self.message)


class StateInvalid(StoreError):
    """A row the enclave did not write, or wrote otherwise (tampered, moved, inserted)."""


class StateRolledBack(StoreError):
    code = ErrorCode.STATE_ROLLED_BACK
    message = "the stored state is older than what this gateway has seen"


class StoreUnavailable(StoreError):
    """The database cannot be reached or written (down, disk full): retry later. Nothing
    was written, so nothing is lost; the type only is logged (the driver's text may quote
    the database's address)."""

    code = ErrorCode.STORE_UNAVAILABLE
    message = "the platform's database is unavailable; retry later"


class BudgetExhausted(StoreError):
    code = ErrorCode.BUDGET_EXHAUSTED
    message = "this API key's token budget does not cover the request"


@dataclass(frozen=True)
class Account:
    id: str
    name: str
    created_at: float


@dataclass(frozen=True)
class ApiKey:
    id: str
    account_id: str
    name: str
    lookup: str
    created_at: float
    revoked: bool
    budget_tokens: int | None
    used_tokens: int
    reserved_tokens: int
    requests: int

    @property
    def exhausted(self) -> bool:
        return self.budget_tokens is not None and self.used_tokens >= self.budget_tokens

    @property
    def remaining(self) -> int | None:
        if self.budget_tokens is None:
            return None
        return max(0, self.budget_tokens - self.used_tokens - self.reserved_tokens)


@dataclass(frozen=True)
class Chatbot:
    id: str
    account_id: str
    name: str
    model: str
    description: str
    system_prompt: str
    created_at: float


@dataclass(frozen=True)
class Reservation:
    key_id: str
    tokens: int


def _hash(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def _canonical(table: str, fields: dict[str, Any]) -> bytes:
    return json.dumps({"table": table, **fields}, sort_keys=True,
                      separators=(",", ":")).encode()


_KEY_FIELDS = ("id", "account_id", "name", "lookup", "created_at", "revoked_at",
               "budget_tokens", "used_tokens", "reserved_tokens", "requests")


class PlatformStore:
    def __init__(self, url: str, data_key: DataKey) -> None:
        self._engine = open_database(url)
        self._sqlite = url.startswith("sqlite")
        self._key = data_key
        self._writing = threading.Lock()  # one transaction at a time per process
        self._seen: dict[str, int] = {}  # account id -> highest committed version seen
        self._committing: dict[str, int] = {}
        create_schema(self._engine, metadata)

    def close(self) -> None:
        self._engine.dispose()

    # --- row authentication -----------------------------------------------------------

    def _mac(self, table: str, fields: dict[str, Any]) -> bytes:
        return self._key.mac(_canonical(table, fields))

    def _check(self, table: str, fields: dict[str, Any], mac: bytes) -> None:
        if not hmac.compare_digest(self._mac(table, fields), mac):
            raise StateInvalid(f"a {table} row failed to authenticate")

    def _key_fields(self, row: Any) -> dict[str, Any]:
        fields = {name: getattr(row, name) for name in _KEY_FIELDS}
        fields["key_hash"] = row.key_hash.hex()
        return fields

    def _key_row(self, row: Any) -> ApiKey:
        self._check("api_keys", self._key_fields(row), row.mac)
        return ApiKey(row.id, row.account_id, row.name, row.lookup, row.created_at,
                      row.revoked_at is not None, row.budget_tokens, row.used_tokens,
                      row.reserved_tokens, row.requests)

    def _keys_digest(self, key_rows: Sequence[Any]) -> bytes:
        body = b"".join(r.id.encode() + b"\x00" + r.mac for r in sorted(key_rows,
                                                                        key=lambda r: r.id))
        return hashlib.sha256(b"cloister-account-keys-v1" + body).digest()

    @staticmethod
    def _conversations_digest(rows: Sequence[Any]) -> bytes | None:
        if not rows:
            return None
        body = b"".join(r.id.encode() + b"\x00" + r.mac for r in sorted(rows,
                                                                       key=lambda r: r.id))
        return hashlib.sha256(b"cloister-account-conversations-v1" + body).digest()

    @staticmethod
    def _account_values(account_id: str, name: str, created_at: float, version: int,
                        keys_digest: bytes, conversations_digest: bytes | None
                        ) -> dict[str, Any]:
        fields = {"id": account_id, "name": name, "created_at": created_at,
                  "version": version, "keys_digest": keys_digest.hex()}
        if conversations_digest is not None:  # absent: rows MACed before it existed
            fields["conversations_digest"] = conversations_digest.hex()
        return fields

    def _account_fields(self, row: Any) -> dict[str, Any]:
        return self._account_values(row.id, row.name, row.created_at, row.version,
                                    row.keys_digest, row.conversations_digest)

    def _verified_conversations(self, db: sa.Connection, account: Any, *,
                                lock: bool = False) -> list[Any]:
        """The account's conversation rows, if they are the ones it vouches for."""
        query = sa.select(conversations).where(conversations.c.account_id == account.id)
        rows = db.execute(query.with_for_update() if lock else query).all()
        for row in rows:
            self._check("conversations", self._conversation_fields(row), row.mac)
        digest = self._conversations_digest(rows) or b""
        if not hmac.compare_digest(digest, account.conversations_digest or b""):
            raise StateInvalid("the account's conversations are not the ones it vouches for")
        return list(rows)

    def _verified_account(self, db: sa.Connection, account_id: str, *, lock: bool = False
                          ) -> Any:
        """The account row, authenticated with its keys, and not older than seen."""
        seen = self._seen.get(account_id, 0)  # before the read: a later commit is newer
        query = sa.select(accounts).where(accounts.c.id == account_id)
        row = db.execute(query.with_for_update() if lock else query).first()
        if row is None:
            raise StateInvalid("an account row is missing")
        self._check("accounts", self._account_fields(row), row.mac)
        keys_query = sa.select(api_keys).where(api_keys.c.account_id == account_id)
        key_rows = db.execute(keys_query.with_for_update() if lock else keys_query).all()
        for key_row in key_rows:
            self._key_row(key_row)
        if not hmac.compare_digest(self._keys_digest(key_rows), row.keys_digest):
            raise StateInvalid("the account's API keys are not the ones it vouches for")
        if row.version < seen:
            raise StateRolledBack()
        self._seen[account_id] = max(row.version, self._seen.get(account_id, 0))
        return row

    def _bump_account(self, db: sa.Connection, account_id: str, version: int, *,
                      conversations_changed: bool = False) -> None:
        """After any change to an account's rows: the next version, vouching for the
        account's keys as they are now (and its conversations, where they changed: the
        caller verified them first)."""
        key_rows = db.execute(sa.select(api_keys).where(
            api_keys.c.account_id == account_id)).all()
        row = db.execute(sa.select(accounts).where(accounts.c.id == account_id)).one()
        digest = self._keys_digest(key_rows)
        talks = row.conversations_digest
        if conversations_changed:
            talks = self._conversations_digest(db.execute(sa.select(conversations).where(
                conversations.c.account_id == account_id)).all())
        fields = self._account_values(row.id, row.name, row.created_at, version + 1,
                                      digest, talks)
        db.execute(accounts.update().where(accounts.c.id == account_id).values(
            version=version + 1, keys_digest=digest, conversations_digest=talks,
            mac=self._mac("accounts", fields)))
        self._committing[account_id] = version + 1

    def _write_key(self, db: sa.Connection, fields: dict[str, Any], key_hash: bytes, *,
                   insert: bool = False) -> None:
        values = {**fields, "key_hash": key_hash}
        values["mac"] = self._mac("api_keys", {**fields, "key_hash": key_hash.hex()})
        if insert:
            db.execute(api_keys.insert().values(**values))
        else:
            db.execute(api_keys.update().where(api_keys.c.id == fields["id"]).values(**values))

    @contextmanager
    def _read(self) -> Iterator[sa.Connection]:
        """A consistent view for reading: an account and its keys are checked together,
        so no write may land between the two reads (a false alarm otherwise)."""
        with self._writing, _available(), self._engine.connect() as db:
            if not self._sqlite:  # one snapshot for the whole read (other replicas write)
                db = db.execution_options(isolation_level="REPEATABLE READ")
            yield db

    @contextmanager
    def _transaction(self) -> Iterator[sa.Connection]:
        """One write transaction; the versions it wrote count as seen once committed."""
        with self._writing, _available():
            self._committing = {}
            with self._engine.begin() as db:
                yield db
            for account_id, version in self._committing.items():
                self._seen[account_id] = max(version, self._seen.get(account_id, 0))

    # --- accounts and API keys --------------------------------------------------------

    def create_account(self, name: str) -> Account:
        account_id, now = uuid.uuid4().hex, time.time()
        digest = self._keys_digest([])
        fields = self._account_values(account_id, name, now, 1, digest, None)
        with self._transaction() as db:
            db.execute(accounts.insert().values(id=account_id, name=name, created_at=now,
                                                version=1, keys_digest=digest,
                                                mac=self._mac("accounts", fields)))
        self._seen[account_id] = 1
        return Account(account_id, name, now)

    def list_accounts(self) -> list[Account]:
        with self._read() as db:
            rows = db.execute(sa.select(accounts).order_by(accounts.c.created_at)).all()
        out = []
        for row in rows:
            self._check("accounts", self._account_fields(row), row.mac)
            out.append(Account(row.id, row.name, row.created_at))
        return out

    def create_api_key(self, account_id: str, name: str, *,
                       budget_tokens: int | None = None) -> tuple[str, ApiKey]:
        """A new key of `account_id`: returned once in plaintext, stored as a hash."""
        secret = KEY_PREFIX + base64.urlsafe_b64encode(os.urandom(32)).decode().rstrip("=")
        key_id = uuid.uuid4().hex
        fields: dict[str, Any] = {"id": key_id, "account_id": account_id, "name": name,
                  "lookup": secret[:LOOKUP_CHARS], "created_at": time.time(),
                  "revoked_at": None, "budget_tokens": budget_tokens, "used_tokens": 0,
                  "reserved_tokens": 0, "requests": 0}
        with self._transaction() as db:
            account = self._verified_account(db, account_id, lock=True)
            self._write_key(db, fields, _hash(secret), insert=True)
            self._bump_account(db, account_id, account.version)
        record = self.get_api_key(key_id)
        assert record is not None
        return secret, record

    def get_api_key(self, key_id: str) -> ApiKey | None:
        with self._read() as db:
            row = db.execute(sa.select(api_keys).where(api_keys.c.id == key_id)).first()
            if row is None:
                return None
            self._verified_account(db, row.account_id)
        return self._key_row(row)

    def list_api_keys(self, account_id: str | None = None) -> list[ApiKey]:
        query = sa.select(api_keys).order_by(api_keys.c.created_at)
        if account_id is not None:
            query = query.where(api_keys.c.account_id == account_id)
        with self._read() as db:
            rows = db.execute(query).all()
            for account in {r.account_id for r in rows}:
                self._verified_account(db, account)
        return [self._key_row(r) for r in rows]

    def _update_key(self, key_id: str, change: Any) -> ApiKey | None:
        """Apply `change(fields) -> fields | None` to a key in one transaction. Locks go
        account first, then its keys, in every transaction (no deadlock between them)."""
        with self._transaction() as db:
            row = db.execute(sa.select(api_keys.c.account_id).where(
                api_keys.c.id == key_id)).first()
            if row is None:
                return None
            account = self._verified_account(db, row.account_id, lock=True)
            row = db.execute(sa.select(api_keys).where(api_keys.c.id == key_id)).one()
            fields = change(self._key_fields(row))
            if fields is None:
                return None
            fields.pop("key_hash")
            self._write_key(db, fields, row.key_hash)
            self._bump_account(db, row.account_id, account.version)
        return self.get_api_key(key_id)

    def revoke_api_key(self, key_id: str) -> bool:
        def revoke(fields: dict[str, Any]) -> dict[str, Any] | None:
            if fields["revoked_at"] is not None:
                return None
            return {**fields, "revoked_at": time.time()}
        return self._update_key(key_id, revoke) is not None

    def set_budget(self, key_id: str, budget_tokens: int | None) -> ApiKey | None:
        return self._update_key(key_id, lambda f: {**f, "budget_tokens": budget_tokens})

    def authenticate(self, presented: str) -> ApiKey | None:
        """The live key matching `presented`, compared in constant time; else None.
        A matching row that fails to authenticate raises `StateInvalid`."""
        digest = _hash(presented)
        with self._read() as db:
            rows = db.execute(sa.select(api_keys).where(
                api_keys.c.lookup == presented[:LOOKUP_CHARS])).all()
            match = None
            for row in rows:
                if hmac.compare_digest(row.key_hash, digest):
                    match = row
            if match is None:
                return None
            self._verified_account(db, match.account_id)
        key = self._key_row(match)
        return None if key.revoked else key

    def reserve(self, key_id: str, tokens: int) -> Reservation:
        """Set aside `tokens` of the key's budget, atomically; `BudgetExhausted` if
        what is used and reserved already leaves less."""
        def take(fields: dict[str, Any]) -> dict[str, Any]:
            budget = fields["budget_tokens"]
            if fields["revoked_at"] is not None or (
                    budget is not None
                    and fields["used_tokens"] + fields["reserved_tokens"] + tokens > budget):
                raise BudgetExhausted()
            return {**fields, "reserved_tokens": fields["reserved_tokens"] + tokens}
        if self._update_key(key_id, take) is None:
            raise StateInvalid("the API key row is missing")
        return Reservation(key_id, tokens)

    def settle(self, reservation: Reservation, used: int) -> None:
        """Release `reservation` and charge what the request really used."""
        def charge(fields: dict[str, Any]) -> dict[str, Any]:
            return {**fields,
                    "reserved_tokens": max(0, fields["reserved_tokens"] - reservation.tokens),
                    "used_tokens": fields["used_tokens"] + used,
                    "requests": fields["requests"] + 1}
        self._update_key(reservation.key_id, charge)

    # --- chatbots and conversations -----------------------------------------------------

    def _bot_fields(self, row: Any) -> dict[str, Any]:
        return {"id": row.id, "account_id": row.account_id, "name": row.name,
                "model": row.model, "description": row.description,
                "created_at": row.created_at,
                "system_prompt": hashlib.sha256(row.system_prompt).hexdigest()}

    def create_chatbot(self, account_id: str, name: str, model: str, system_prompt: str,
                       description: str = "") -> Chatbot:
        bot_id, now = uuid.uuid4().hex, time.time()
        sealed = self._key.seal(system_prompt.encode(),
                                purpose=f"chatbot-prompt:{bot_id}:{account_id}")
        with self._transaction() as db:
            account = self._verified_account(db, account_id, lock=True)
            values = {"id": bot_id, "account_id": account_id, "name": name, "model": model,
                      "description": description, "system_prompt": sealed,
                      "created_at": now}
            fields = {**values, "system_prompt": hashlib.sha256(sealed).hexdigest()}
            db.execute(chatbots.insert().values(**values, mac=self._mac("chatbots", fields)))
            self._bump_account(db, account_id, account.version)
        bot = self.get_chatbot(bot_id, account_id=account_id)
        assert bot is not None
        return bot

    def _chatbot(self, row: Any) -> Chatbot:
        self._check("chatbots", self._bot_fields(row), row.mac)
        try:
            prompt = self._key.open(row.system_prompt,
                                    purpose=f"chatbot-prompt:{row.id}:{row.account_id}")
        except DecryptError:
            raise StateInvalid("a chatbot's system prompt failed to open") from None
        return Chatbot(row.id, row.account_id, row.name, row.model, row.description,
                       prompt.decode(), row.created_at)

    def get_chatbot(self, bot_id: str, *, account_id: str) -> Chatbot | None:
        """The chatbot, if it is `account_id`'s."""
        with self._read() as db:
            row = db.execute(sa.select(chatbots).where(chatbots.c.id == bot_id)).first()
        if row is None or row.account_id != account_id:
            return None
        bot = self._chatbot(row)
        return bot if bot.account_id == account_id else None

    def list_chatbots(self, account_id: str) -> list[Chatbot]:
        with self._read() as db:
            rows = db.execute(sa.select(chatbots).where(chatbots.c.account_id == account_id)
                              .order_by(chatbots.c.created_at)).all()
        return [self._chatbot(r) for r in rows]

    def _conversation_fields(self, row: Any) -> dict[str, Any]:
        return {"id": row.id, "account_id": row.account_id, "chatbot_id": row.chatbot_id,
                "api_key_id": row.api_key_id, "created_at": row.created_at,
                "message_count": row.message_count}

    def conversation_history(self, conversation_id: str, *, chatbot_id: str, account_id: str,
                             api_key_id: str) -> list[dict[str, str]] | None:
        """The conversation's messages, or None if it is not this key's (of this account)
        with this bot: another key of the account cannot read or extend it. Raises
        `StateInvalid` if any of it was tampered with."""
        with self._read() as db:
            row = db.execute(sa.select(conversations).where(
                conversations.c.id == conversation_id)).first()
            if row is None or (row.account_id, row.chatbot_id, row.api_key_id) != (
                    account_id, chatbot_id, api_key_id):
                return None
            self._check("conversations", self._conversation_fields(row), row.mac)
            self._verified_conversations(db, self._verified_account(db, account_id))
            rows = db.execute(sa.select(messages).where(
                messages.c.conversation_id == conversation_id)
                .order_by(messages.c.position)).all()
        if [r.position for r in rows] != list(range(row.message_count)):
            raise StateInvalid("the conversation's messages are not the ones it vouches for")
        out = []
        for r in rows:
            try:
                text = self._key.open(r.content, purpose=_message_purpose(
                    conversation_id, r.position, r.role))
            except DecryptError:
                raise StateInvalid("a conversation message failed to open") from None
            out.append({"role": r.role, "content": text.decode()})
        return out

    def append_turn(self, conversation_id: str | None, *, chatbot_id: str, account_id: str,
                    api_key_id: str, user: str, assistant: str) -> str:
        """Store one user message and its answer (creating the conversation if new)."""
        now = time.time()
        with self._transaction() as db:
            account = self._verified_account(db, account_id, lock=True)
            self._verified_conversations(db, account, lock=True)
            if conversation_id is None:
                conversation_id, count = uuid.uuid4().hex, 0
                fields = {"id": conversation_id, "account_id": account_id,
                          "chatbot_id": chatbot_id, "api_key_id": api_key_id,
                          "created_at": now, "message_count": 0}
                db.execute(conversations.insert().values(
                    **fields, mac=self._mac("conversations", fields)))
            row = db.execute(sa.select(conversations).where(
                conversations.c.id == conversation_id).with_for_update()).one()
            self._check("conversations", self._conversation_fields(row), row.mac)
            if (row.account_id, row.chatbot_id, row.api_key_id) != (account_id, chatbot_id,
                                                                    api_key_id):
                raise StateInvalid("the conversation belongs to someone else")
            count = row.message_count
            for role, text in (("user", user), ("assistant", assistant)):
                db.execute(messages.insert().values(
                    conversation_id=conversation_id, position=count, role=role,
                    content=self._key.seal(text.encode(), purpose=_message_purpose(
                        conversation_id, count, role)), created_at=now))
                count += 1
            fields = {**self._conversation_fields(row), "message_count": count}
            db.execute(conversations.update().where(conversations.c.id == conversation_id)
                       .values(message_count=count, mac=self._mac("conversations", fields)))
            self._bump_account(db, account_id, account.version, conversations_changed=True)
        return conversation_id


@contextmanager
def _available() -> Iterator[None]:
    """The database's own failures (unreachable, full, read-only) as `StoreUnavailable`."""
    try:
        yield
    except sa.exc.OperationalError as exc:
        log.error("store_unavailable", error_type=type(exc.orig).__name__)
        raise StoreUnavailable() from None


def _message_purpose(conversation_id: str, position: int, role: str) -> str:
    return f"conversation-message:{conversation_id}:{position}:{role}"
