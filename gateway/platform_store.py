"""The Enclava platform's state: API keys, usage and budgets, chatbots, conversations.

SQLAlchemy Core over SQLite by default (a file in the state folder), or any URL
SQLAlchemy understands (PostgreSQL for several replicas). API keys are stored only as
SHA-256 hashes (they are 256-bit random, so a plain hash is enough) and compared in
constant time; system prompts and conversation messages are sealed with the enclave's
data key before they are written (`enclave.sealed_state`). Every change that touches
several rows is one transaction: nothing is half-written.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import time
import uuid
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from enclave.sealed_state import DataKey

KEY_PREFIX = "clst_"
# Characters of a key kept in clear to find its row (the rest is only hashed).
LOOKUP_CHARS = 12

metadata = sa.MetaData()
api_keys = sa.Table(
    "api_keys", metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("lookup", sa.String(LOOKUP_CHARS), nullable=False, index=True),
    sa.Column("key_hash", sa.LargeBinary(32), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("revoked_at", sa.Float),
    sa.Column("budget_tokens", sa.BigInteger),
    sa.Column("used_tokens", sa.BigInteger, nullable=False, default=0),
    sa.Column("requests", sa.BigInteger, nullable=False, default=0),
)
chatbots = sa.Table(
    "chatbots", metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("model", sa.String(200), nullable=False),
    sa.Column("description", sa.String(500), nullable=False, default=""),
    sa.Column("system_prompt", sa.LargeBinary, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)
conversations = sa.Table(
    "conversations", metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("chatbot_id", sa.String(32), sa.ForeignKey("chatbots.id"), nullable=False),
    sa.Column("api_key_id", sa.String(32), sa.ForeignKey("api_keys.id"), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)
messages = sa.Table(
    "messages", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("conversation_id", sa.String(32), sa.ForeignKey("conversations.id"),
              nullable=False, index=True),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("content", sa.LargeBinary, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    lookup: str
    created_at: float
    revoked: bool
    budget_tokens: int | None
    used_tokens: int
    requests: int

    @property
    def exhausted(self) -> bool:
        return self.budget_tokens is not None and self.used_tokens >= self.budget_tokens


@dataclass(frozen=True)
class Chatbot:
    id: str
    name: str
    model: str
    description: str
    system_prompt: str
    created_at: float


def _hash(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def _api_key(row: sa.Row[Any]) -> ApiKey:
    return ApiKey(row.id, row.name, row.lookup, row.created_at, row.revoked_at is not None,
                  row.budget_tokens, row.used_tokens, row.requests)


class PlatformStore:
    def __init__(self, url: str, data_key: DataKey) -> None:
        self._engine = sa.create_engine(url, future=True)
        self._key = data_key
        metadata.create_all(self._engine)

    def close(self) -> None:
        self._engine.dispose()

    # --- API keys ---------------------------------------------------------------------

    def create_api_key(self, name: str, *, budget_tokens: int | None = None
                       ) -> tuple[str, ApiKey]:
        """A new key: returned once in plaintext, stored only as a hash."""
        secret = KEY_PREFIX + base64.urlsafe_b64encode(os.urandom(32)).decode().rstrip("=")
        key_id = uuid.uuid4().hex
        with self._engine.begin() as db:
            db.execute(api_keys.insert().values(
                id=key_id, name=name, lookup=secret[:LOOKUP_CHARS], key_hash=_hash(secret),
                created_at=time.time(), budget_tokens=budget_tokens, used_tokens=0,
                requests=0))
        record = self.get_api_key(key_id)
        assert record is not None
        return secret, record

    def get_api_key(self, key_id: str) -> ApiKey | None:
        with self._engine.connect() as db:
            row = db.execute(sa.select(api_keys).where(api_keys.c.id == key_id)).first()
        return _api_key(row) if row else None

    def list_api_keys(self) -> list[ApiKey]:
        with self._engine.connect() as db:
            rows = db.execute(sa.select(api_keys).order_by(api_keys.c.created_at)).all()
        return [_api_key(r) for r in rows]

    def revoke_api_key(self, key_id: str) -> bool:
        with self._engine.begin() as db:
            result = db.execute(api_keys.update().where(api_keys.c.id == key_id)
                                .where(api_keys.c.revoked_at.is_(None))
                                .values(revoked_at=time.time()))
        return result.rowcount == 1

    def authenticate(self, presented: str) -> ApiKey | None:
        """The live key matching `presented`, compared in constant time; else None."""
        digest = _hash(presented)
        with self._engine.connect() as db:
            rows = db.execute(sa.select(api_keys).where(
                api_keys.c.lookup == presented[:LOOKUP_CHARS])).all()
        match = None
        for row in rows:
            if hmac.compare_digest(row.key_hash, digest):
                match = row
        if match is None or match.revoked_at is not None:
            return None
        return _api_key(match)

    def record_usage(self, key_id: str, tokens: int) -> None:
        with self._engine.begin() as db:
            db.execute(api_keys.update().where(api_keys.c.id == key_id).values(
                used_tokens=api_keys.c.used_tokens + tokens,
                requests=api_keys.c.requests + 1))

    # --- chatbots and conversations -----------------------------------------------------

    def create_chatbot(self, name: str, model: str, system_prompt: str,
                       description: str = "") -> Chatbot:
        bot_id = uuid.uuid4().hex
        sealed = self._key.seal(system_prompt.encode(), purpose=f"chatbot-prompt:{bot_id}")
        with self._engine.begin() as db:
            db.execute(chatbots.insert().values(id=bot_id, name=name, model=model,
                                                description=description,
                                                system_prompt=sealed, created_at=time.time()))
        bot = self.get_chatbot(bot_id)
        assert bot is not None
        return bot

    def _chatbot(self, row: sa.Row[Any]) -> Chatbot:
        prompt = self._key.open(row.system_prompt, purpose=f"chatbot-prompt:{row.id}")
        return Chatbot(row.id, row.name, row.model, row.description, prompt.decode(),
                       row.created_at)

    def get_chatbot(self, bot_id: str) -> Chatbot | None:
        with self._engine.connect() as db:
            row = db.execute(sa.select(chatbots).where(chatbots.c.id == bot_id)).first()
        return self._chatbot(row) if row else None

    def list_chatbots(self) -> list[Chatbot]:
        with self._engine.connect() as db:
            rows = db.execute(sa.select(chatbots).order_by(chatbots.c.created_at)).all()
        return [self._chatbot(r) for r in rows]

    def conversation_history(self, conversation_id: str, *, chatbot_id: str, api_key_id: str
                             ) -> list[dict[str, str]] | None:
        """The conversation's messages, or None if it is not this key's with this bot."""
        with self._engine.connect() as db:
            owner = db.execute(sa.select(conversations).where(
                conversations.c.id == conversation_id)).first()
            if owner is None or owner.chatbot_id != chatbot_id or \
                    owner.api_key_id != api_key_id:
                return None
            rows = db.execute(sa.select(messages).where(
                messages.c.conversation_id == conversation_id).order_by(messages.c.id)).all()
        return [{"role": r.role, "content": self._key.open(
            r.content, purpose=f"conversation-message:{conversation_id}").decode()}
            for r in rows]

    def append_turn(self, conversation_id: str | None, *, chatbot_id: str, api_key_id: str,
                    user: str, assistant: str) -> str:
        """Store one user message and its answer (creating the conversation if new)."""
        now = time.time()
        with self._engine.begin() as db:
            if conversation_id is None:
                conversation_id = uuid.uuid4().hex
                db.execute(conversations.insert().values(
                    id=conversation_id, chatbot_id=chatbot_id, api_key_id=api_key_id,
                    created_at=now))
            purpose = f"conversation-message:{conversation_id}"
            for role, text in (("user", user), ("assistant", assistant)):
                db.execute(messages.insert().values(
                    conversation_id=conversation_id, role=role,
                    content=self._key.seal(text.encode(), purpose=purpose), created_at=now))
        return conversation_id
