"""C2SP tlog-tiles (c2sp.org/tlog-tiles): a log as static files any HTTP server can hold.

    checkpoint                        the signed checkpoint
    tile/<L>/<N>[.p/<W>]              hashes 256N..256N+W of level L (each the hash of a
                                      complete subtree of 256**L leaves), 32 bytes each
    tile/entries/<N>[.p/<W>]          entries 256N..256N+W, each prefixed by its length
                                      (2 bytes, big-endian)
    <N> is written in groups of three digits, each group but the last prefixed by "x"
    (1234067: x001/x234/067); W is 1..255 and marks a partial tile.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence

from enclave.tlog.merkle import MerkleTree

WIDTH = 256
ENTRIES = -1  # the level of entry bundles
MAX_ENTRY_SIZE = 0xFFFF
_PATH = re.compile(r"tile/(entries|\d+)/((?:x\d{3}/)*\d{3})(?:\.p/(\d+))?")


class TileError(Exception):
    pass


def encode_index(index: int) -> str:
    digits = f"{index:d}"
    digits = "0" * (-len(digits) % 3) + digits
    groups = [digits[i:i + 3] for i in range(0, len(digits), 3)]
    return "/".join([*("x" + g for g in groups[:-1]), groups[-1]])


def tile_path(level: int, index: int, width: int = WIDTH) -> str:
    name = "entries" if level == ENTRIES else str(level)
    suffix = "" if width == WIDTH else f".p/{width}"
    return f"tile/{name}/{encode_index(index)}{suffix}"


def parse_tile_path(path: str) -> tuple[int, int, int]:
    """(level, index, width) of a tile path; `TileError` for anything else."""
    match = _PATH.fullmatch(path)
    if match is None:
        raise TileError("no such tile")
    level_text, index_text, width_text = match.groups()
    level = ENTRIES if level_text == "entries" else int(level_text)
    width = WIDTH if width_text is None else int(width_text)
    groups = index_text.split("/")
    if (not 0 < width <= WIDTH or (width_text is not None and width == WIDTH)
            or (len(groups) > 1 and groups[0] == "x000") or level > 63):
        raise TileError("no such tile")
    return level, int("".join(g.lstrip("x") for g in groups)), width


def hashes_at(size: int, level: int) -> int:
    """How many complete hashes of `level` a tree of `size` leaves has."""
    return size >> (8 * level)


def check_tile(size: int, level: int, index: int, width: int) -> None:
    """`TileError` unless the tree of `size` leaves publishes this tile."""
    count = size if level == ENTRIES else hashes_at(size, level)
    if (index * WIDTH + width > count
            or (width < WIDTH and count - index * WIDTH != width)):
        raise TileError("no such tile")


def tile_data(tree: MerkleTree, size: int, level: int, index: int, width: int) -> bytes:
    """The hashes of one tile (level >= 0) of the tree of `size` leaves."""
    check_tile(size, level, index, width)
    step = 1 << (8 * level)
    return b"".join(tree.subtree(i * step, (i + 1) * step)
                    for i in range(index * WIDTH, index * WIDTH + width))


def entry_bundle(entries: Sequence[bytes]) -> bytes:
    out = bytearray()
    for entry in entries:
        if len(entry) > MAX_ENTRY_SIZE:
            raise TileError("an entry of a tiled log is at most 65,535 bytes")
        out += len(entry).to_bytes(2, "big") + entry
    return bytes(out)


def parse_entry_bundle(data: bytes) -> list[bytes]:
    entries, at = [], 0
    while at < len(data):
        if at + 2 > len(data):
            raise TileError("a truncated entry bundle")
        length = int.from_bytes(data[at:at + 2], "big")
        if at + 2 + length > len(data):
            raise TileError("a truncated entry bundle")
        entries.append(data[at + 2:at + 2 + length])
        at += 2 + length
    return entries


def tiles_of(size: int) -> Iterator[tuple[int, int, int]]:
    """Every (level, index, width) a tree of `size` leaves publishes, entry bundles
    included: full tiles, then the partial one of each level."""
    for level in (ENTRIES, *range(64)):
        count = size if level == ENTRIES else hashes_at(size, level)
        if count == 0:
            if level >= 0:
                return
            continue
        for index in range(count // WIDTH):
            yield level, index, WIDTH
        if count % WIDTH:
            yield level, count // WIDTH, count % WIDTH
