"""Replay protection: a sealed request is answered once.

Every dialect's sealed request carries something unique to it that cannot be changed
without breaking the decryption (`InnerRequest.replay_id`). The guard records it, after
the request opened (so only authenticated requests take room), and refuses a second
request with the same one (`409 replayed_request`), before the engine sees it. Where the
dialect carries the client's clock inside the encryption (OHTTP: the inner `Date`
header, RFC 9458 section 6.5; our clients of the other dialects: `cloister_sent_at` in
the sealed body), a request outside `window` seconds of ours is refused (`400
stale_request`) and its record is needed only for that window; otherwise the record is
kept as long as any key that could open it is honoured (`horizon`). Records are tied to
this process: a dated request sent before the guard started (a restart, which forgets
in-memory records) is refused as stale.

The record store is pluggable (`ReplayCache`) so that replicas can share one; the
in-memory store is bounded by entries (each about 200 bytes: a 32-byte digest, its
expiry, its client and the dict and heap slots; 500,000 entries are about 100 MiB).
Anyone can seal a valid request to the published key, so records are counted per client
(its address): a client past its share (`SHARE` of the store) sheds its own oldest
records, and a full store sheds the oldest of whoever holds the most. What is shed is a
flooder's own request, which then could be replayed against the flooder only; an honest
client is never refused for room. A store of one client's records (the admin API's)
keeps no share and refuses when full.
"""

from __future__ import annotations

import hashlib
import heapq
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

from enclave.dialect import InnerRequest
from enclave.errors import RequestRefused
from enclave.wire_errors import ErrorCode

DEFAULT_WINDOW_SECONDS = 120.0
DEFAULT_MAX_ENTRIES = 500_000


class ReplayedRequest(RequestRefused):
    code = ErrorCode.REPLAYED_REQUEST
    message = "this request was already answered"


class StaleRequest(RequestRefused):
    code = ErrorCode.STALE_REQUEST
    message = "the request's time is outside the accepted window: check the client's clock"


class ReplayCacheFull(RequestRefused):
    code = ErrorCode.OVERLOADED
    message = "the gateway is at capacity; retry later"


class ReplayCacheUnavailable(RequestRefused):
    code = ErrorCode.STORE_UNAVAILABLE
    message = "the replay records are unavailable; retry later"


class ReplayCache(Protocol):
    # Whether `add` waits on I/O (a shared database): then it is called off the event loop.
    blocking: bool

    def add(self, key: bytes, expires_at: float, now: float, client: str = "") -> bool:
        """Record `key` until `expires_at` for `client`; False if it is already recorded.
        Raises `ReplayCacheFull` when it cannot record it, `ReplayCacheUnavailable` when
        its store cannot be reached."""


# A client holds at most this share of the store's records.
SHARE = 0.25


class MemoryReplayCache:
    """Records in memory. With a `share` (the default), counted per client: a client past
    it sheds its own oldest, and a full store sheds the oldest of whoever holds the most.
    With `share=None` (one client, as the admin API's signatures), a full store refuses
    (`ReplayCacheFull`) rather than forget a record still needed."""

    blocking = False

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES, *,
                 share: float | None = SHARE) -> None:
        self._max = max_entries
        self._quota = max(1, int(max_entries * share)) if share is not None else None
        self._records: dict[bytes, tuple[float, str]] = {}  # key -> (expiry, client)
        self._owned: dict[str, OrderedDict[bytes, None]] = {}  # per client, oldest first
        self._heap: list[tuple[float, bytes]] = []
        self._lock = threading.Lock()  # requests may be opened in worker threads

    def __len__(self) -> int:
        return len(self._records)

    def add(self, key: bytes, expires_at: float, now: float, client: str = "") -> bool:
        with self._lock:
            self._prune(now)
            if key in self._records:
                return False
            if self._quota is None:
                if len(self._records) >= self._max:
                    raise ReplayCacheFull()
            else:
                owned = self._owned.get(client)
                if owned is not None and len(owned) >= self._quota:
                    self._forget(next(iter(owned)))  # its own oldest
                if len(self._records) >= self._max:
                    greediest = max(self._owned.values(), key=len)
                    self._forget(next(iter(greediest)))
            self._records[key] = (expires_at, client)
            self._owned.setdefault(client, OrderedDict())[key] = None
            heapq.heappush(self._heap, (expires_at, key))
            return True

    def _forget(self, key: bytes) -> None:
        _, client = self._records.pop(key)
        owned = self._owned[client]
        del owned[key]
        if not owned:
            del self._owned[client]

    def _prune(self, now: float) -> None:
        while self._heap and self._heap[0][0] <= now:
            expires, key = heapq.heappop(self._heap)
            record = self._records.get(key)
            if record is not None and record[0] == expires:  # not a later record's
                self._forget(key)


class ReplayGuard:
    """`horizon()`: until when a request opened now could still be opened (the newest
    key's end of rotation plus its grace)."""

    def __init__(self, cache: ReplayCache, *, horizon: Callable[[], float],
                 window: float = DEFAULT_WINDOW_SECONDS,
                 clock: Callable[[], float] = time.time) -> None:
        self._cache, self._horizon, self._window, self._clock = cache, horizon, window, clock
        # Records from before this guard (a restart) may be gone: a request whose sealed
        # time is older (by more than the stamp's one-second resolution) is refused.
        self._started = clock()

    @property
    def blocking(self) -> bool:
        """Whether `check` waits on I/O (call it off the event loop then)."""
        return self._cache.blocking

    def check(self, dialect: str, request: InnerRequest, client: str = "") -> None:
        """Raises `ReplayedRequest`, `StaleRequest`, `ReplayCacheFull` or
        `ReplayCacheUnavailable`."""
        if not request.replay_id:
            return  # the development-only plaintext dialect has nothing to replay against
        now = self._clock()
        if request.sent_at is not None:
            if abs(now - request.sent_at) > self._window:
                raise StaleRequest()
            if request.sent_at + 1 < self._started:
                raise StaleRequest("the request was sent before this gateway started: "
                                   "send it again")
            expires = request.sent_at + self._window
        else:
            expires = self._horizon()
        key = hashlib.sha256(dialect.encode() + b"\x00" + request.replay_id).digest()
        if not self._cache.add(key, expires, now, client):
            raise ReplayedRequest()
