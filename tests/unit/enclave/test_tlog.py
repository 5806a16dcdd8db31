"""The transparency log (`enclave.tlog`, `gateway.tlog`): RFC 9162 trees and proofs
against the published RFC 6962 reference roots; C2SP signed notes, checkpoints and tiles
read by Go's own golang.org/x/mod/sumdb/note and sumdb/tlog (an outside verifier,
tests/go/tlogcheck); a client that refuses a forked, rolled-back or unsigned log and an
inclusion proof for another tree; the log in SQLite shared by two processes' views."""

from __future__ import annotations

import base64
import json
import subprocess

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from enclave.tlog import tiles
from enclave.tlog.entries import receipt_entry, receipt_leaf
from enclave.tlog.merkle import (
    EMPTY_ROOT,
    MerkleTree,
    ProofError,
    leaf_hash,
    node_hash,
    verify_consistency,
    verify_inclusion,
)
from enclave.tlog.note import (
    Checkpoint,
    Note,
    NoteError,
    NoteKey,
    NoteSigner,
    open_checkpoint,
    signed_time,
)
from enclave.tlog.view import LogRefused, LogView, Verified, check_inclusion, open_signed
from gateway.tlog import CHECKPOINT_SECONDS, LogStore, TransparencyLog

# RFC 6962's reference tree (certificate-transparency's merkle_tree_test): eight leaves
# and the root of each prefix, as every CT and tlog implementation tests them.
RFC6962_LEAVES = [bytes.fromhex(h) for h in (
    "", "00", "10", "2021", "3031", "40414243", "5051525354555657",
    "606162636465666768696a6b6c6d6e6f")]
RFC6962_ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"]


def _reference_root(entries: list[bytes]) -> bytes:
    """MTH as RFC 9162 2.1.1 writes it, recursively, for comparison."""
    if not entries:
        return EMPTY_ROOT
    if len(entries) == 1:
        return leaf_hash(entries[0])
    k = 1 << ((len(entries) - 1).bit_length() - 1)
    return node_hash(_reference_root(entries[:k]), _reference_root(entries[k:]))


def test_the_tree_gives_rfc_6962_s_reference_roots() -> None:
    tree = MerkleTree()
    for leaf in RFC6962_LEAVES:
        tree.append(leaf)
    assert [tree.root(n).hex() for n in range(1, 9)] == RFC6962_ROOTS
    assert tree.root(0) == EMPTY_ROOT


def test_every_proof_of_a_tree_verifies_and_matches_the_recursive_definition() -> None:
    entries = [b"entry %d" % i for i in range(70)]
    tree = MerkleTree()
    for entry in entries:
        tree.append(entry)
    for size in (1, 2, 3, 5, 8, 13, 32, 33, 64, 70):
        root = tree.root(size)
        assert root == _reference_root(entries[:size])
        for index in range(size):
            verify_inclusion(index, size, leaf_hash(entries[index]),
                             tree.inclusion_proof(index, size), root)
        for first in range(size + 1):
            verify_consistency(first, size, tree.root(first), root,
                               tree.consistency_proof(first, size))


def _tree(n: int) -> MerkleTree:
    tree = MerkleTree()
    for i in range(n):
        tree.append(b"%d" % i)
    return tree


@pytest.mark.parametrize("attack", ["other-size", "other-index", "other-leaf", "flipped",
                                    "extended", "truncated"])
def test_an_inclusion_proof_that_does_not_hold_is_refused(attack) -> None:
    tree = _tree(21)
    index, size, leaf = 6, 20, leaf_hash(b"6")
    proof, root = tree.inclusion_proof(index, size), tree.root(size)
    verify_inclusion(index, size, leaf, proof, root)
    if attack == "other-size":  # a proof for another tree size, checked against this one
        proof = tree.inclusion_proof(index, 21)
    elif attack == "other-index":
        index = 7
    elif attack == "other-leaf":
        leaf = leaf_hash(b"7")
    elif attack == "flipped":
        proof = [proof[0][:-1] + bytes([proof[0][-1] ^ 1]), *proof[1:]]
    elif attack == "extended":
        proof = [*proof, root]
    else:
        proof = proof[:-1]
    with pytest.raises(ProofError):
        verify_inclusion(index, size, leaf, proof, root)


def test_a_consistency_proof_that_does_not_hold_is_refused() -> None:
    tree, other = _tree(20), MerkleTree([leaf_hash(b"x%d" % i) for i in range(20)])
    proof = tree.consistency_proof(7, 20)
    verify_consistency(7, 20, tree.root(7), tree.root(20), proof)
    with pytest.raises(ProofError):  # the first tree is not a prefix of this one
        verify_consistency(7, 20, other.root(7), tree.root(20), proof)
    with pytest.raises(ProofError):
        verify_consistency(7, 20, tree.root(7), other.root(20), proof)
    with pytest.raises(ProofError):  # two roots of one size: a fork
        verify_consistency(20, 20, tree.root(20), other.root(20), [])
    with pytest.raises(ProofError):
        verify_consistency(20, 7, tree.root(20), tree.root(7), proof)


# --- notes and checkpoints ---------------------------------------------------------------

KEY = Ed25519PrivateKey.generate()
SIGNER = NoteSigner("cloister.log/test", KEY)


def test_a_signed_checkpoint_opens_with_its_key_and_with_no_other() -> None:
    checkpoint = Checkpoint("cloister.log/test", 5, bytes(range(32)))
    note = SIGNER.sign(checkpoint.text())
    assert note.startswith(b"cloister.log/test\n5\n" + base64.b64encode(bytes(range(32))))
    assert open_checkpoint(note, SIGNER.key)[0] == checkpoint
    assert NoteKey.parse_vkey(SIGNER.key.vkey()) == SIGNER.key
    other = NoteSigner("cloister.log/test", Ed25519PrivateKey.generate())
    with pytest.raises(NoteError, match="note_unsigned_by_key"):
        open_checkpoint(note, other.key)
    forged = note.replace(b"\n5\n", b"\n6\n")
    with pytest.raises(NoteError, match="note_signature_invalid"):
        open_checkpoint(forged, SIGNER.key)
    for broken in (b"", b"no signature\n", note[:-2], note + b"junk"):
        with pytest.raises(NoteError):
            open_checkpoint(broken, SIGNER.key)


def test_a_tile_path_is_the_c2sp_one() -> None:
    assert tiles.tile_path(0, 1234067) == "tile/0/x001/x234/067"
    assert tiles.tile_path(tiles.ENTRIES, 0, 5) == "tile/entries/000.p/5"
    assert tiles.parse_tile_path("tile/2/x001/000.p/255") == (2, 1000, 255)
    for bad in ("tile/0/1", "tile/0/000.p/256", "tile/0/000.p/0", "tile/0/x000/001",
                "tile/../000", "tile/0/000.p/256"):
        with pytest.raises(tiles.TileError):
            tiles.parse_tile_path(bad)
    assert tiles.parse_entry_bundle(tiles.entry_bundle([b"a", b"", b"bc"])) == [b"a", b"",
                                                                             b"bc"]


# --- a client's view: forks, rollbacks, other trees ---------------------------------------

def _signed_checkpoint(tree: MerkleTree, size: int, signer: NoteSigner = SIGNER) -> Verified:
    note = signer.sign(Checkpoint(signer.key.name, size, tree.root(size)).text())
    return open_signed(note, signer.key.public_key)


def test_the_client_follows_a_growing_log_and_refuses_a_fork() -> None:
    tree = _tree(30)
    view = LogView()
    view.accept(_signed_checkpoint(tree, 10), [])
    view.accept(_signed_checkpoint(tree, 30), tree.consistency_proof(10, 30))
    # the operator forks the log: the same size, another root (one entry rewritten)
    forked = MerkleTree([*tree.levels[0][:29], leaf_hash(b"rewritten")])
    with pytest.raises(LogRefused) as refused:
        view.accept(_signed_checkpoint(forked, 30), [])
    assert refused.value.reason == "log_forked"
    # ... or shows a longer tree that does not extend the one the client saw
    forked.append(b"more")
    with pytest.raises(LogRefused, match="log_forked"):
        view.accept(_signed_checkpoint(forked, 31), forked.consistency_proof(30, 31))
    with pytest.raises(LogRefused, match="log_rolled_back"):
        view.accept(_signed_checkpoint(tree, 20), [])
    assert view.known[SIGNER.key.name].size == 30
    assert LogView.from_state(json.loads(json.dumps(view.state()))).known == view.known


def test_a_checkpoint_not_signed_by_the_attested_log_key_is_refused() -> None:
    tree = _tree(3)
    note = SIGNER.sign(Checkpoint(SIGNER.key.name, 3, tree.root()).text())
    with pytest.raises(LogRefused, match="checkpoint_invalid"):
        open_signed(note, Ed25519PrivateKey.generate().public_key().public_bytes_raw())
    verified = open_signed(note, KEY.public_key().public_bytes_raw())
    check_inclusion(verified.checkpoint, leaf_hash(b"1"), 1, tree.inclusion_proof(1, 3))
    with pytest.raises(LogRefused, match="inclusion_invalid"):  # a proof for another tree
        check_inclusion(verified.checkpoint, leaf_hash(b"1"), 1, _tree(4).inclusion_proof(1, 4))


# --- the stored log, sequenced, followed and published as tiles ------------------------------

def test_the_stored_log_is_read_by_go_s_own_note_and_tlog(tmp_path, tlogcheck) -> None:
    store = LogStore(f"sqlite:///{tmp_path / 'log.db'}")
    log = TransparencyLog(store, KEY)
    wires = [f"receipt-{i}" for i in range(700)]  # past two full tiles and a level-1 hash
    for wire in wires[:300]:
        log.append(receipt_entry(wire))
    log.turn()
    first = Checkpoint.parse(Note.parse(log.checkpoint or b"").text)
    for wire in wires[300:]:
        log.append(receipt_entry(wire))
    log.turn()
    folder = tmp_path / "static"
    assert log.export(folder) == 700
    assert (folder / "tile/0/001").stat().st_size == 256 * 32
    assert (folder / "tile/0/002.p/188").exists() and (folder / "tile/1/000.p/2").exists()
    latest = Checkpoint.parse(Note.parse((folder / "checkpoint").read_bytes()).text)
    b64 = lambda hashes: [base64.b64encode(h).decode() for h in hashes]  # noqa: E731
    proofs = {"inclusion": [], "consistency": [{
        "old_size": first.size, "old_root": base64.b64encode(first.root).decode(),
        "new_size": 700, "new_root": base64.b64encode(latest.root).decode(),
        "proof": b64(log.consistency(first.size, 700))}]}
    for i in (0, 255, 256, 511, 699):
        index, proof = log.inclusion(receipt_leaf(wires[i]), 700)
        assert index == i
        proofs["inclusion"].append({"index": index, "size": 700, "proof": b64(proof),
                                    "leaf_hash": base64.b64encode(receipt_leaf(wires[i])
                                                                  ).decode(),
                                    "root": base64.b64encode(latest.root).decode()})
    (tmp_path / "proofs.json").write_text(json.dumps(proofs))
    checked = subprocess.run([str(tlogcheck), "-dir", str(folder), "-vkey",
                              log.signer.key.vkey(), "-proofs", str(tmp_path / "proofs.json")],
                             capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    result = json.loads(checked.stdout)
    assert result["size"] == 700 and result["entries_checked"] == 700
    assert result["inclusion_checked"] == 5 and result["consistency_checked"] == 1
    assert result["origin"] == store.origin
    # the same, exported by `cloister log export` from the database alone
    from cli.main import main

    assert main(["log", "export", str(tmp_path / "exported"), "--database",
                 f"sqlite:///{tmp_path / 'log.db'}"]) == 0
    for path in (folder / "tile").rglob("*"):
        if path.is_file():
            assert (tmp_path / "exported" / path.relative_to(folder)).read_bytes() == \
                path.read_bytes()
    # Go refuses what Cloister's client refuses: a tile changed after publishing
    tile = folder / "tile/0/001"
    data = bytearray(tile.read_bytes())
    data[0] ^= 1
    tile.write_bytes(bytes(data))
    refused = subprocess.run([str(tlogcheck), "-dir", str(folder), "-vkey",
                              log.signer.key.vkey()], capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1 and "error" in json.loads(refused.stdout)
    # ... and a checkpoint signed by another key
    data[0] ^= 1
    tile.write_bytes(bytes(data))
    other = NoteSigner(store.origin, Ed25519PrivateKey.generate())
    refused = subprocess.run([str(tlogcheck), "-dir", str(folder), "-vkey", other.key.vkey()],
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1 and "signature" in json.loads(refused.stdout)["error"]


def test_two_processes_share_one_log_with_one_sequencer(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'log.db'}"
    a, b = TransparencyLog(LogStore(url), KEY), TransparencyLog(LogStore(url), KEY)
    assert a.origin == b.origin
    a.append(b"from a")
    b.append(b"from b")
    a.turn()  # a holds the lease: it sequences what it queued
    b.turn()  # b queues its entry and follows
    a.turn()
    b.turn()
    assert a.tree.size == b.tree.size == 2
    assert a.tree.root() == b.tree.root()
    assert a.checkpoint == b.checkpoint and a.checkpoint_size() == 2
    # entries survive a restart: a new view rebuilds the same tree from the database
    c = TransparencyLog(LogStore(url), KEY)
    c.turn()
    assert c.tree.root() == a.tree.root()
    c.append_once([b"from a", b"new"])  # what the log holds is not appended again
    c.turn()  # queued by c, numbered by a (whose lease is current)
    a.turn()
    assert a.tree.size == 3 and a.store.entries(2) == [b"new"]


def test_a_fleet_s_replicas_share_one_log_in_postgresql_with_one_sequencer(postgres_url) -> None:
    replicas = [TransparencyLog(LogStore(postgres_url), KEY) for _ in range(3)]
    assert len({r.origin for r in replicas}) == 1
    for n, replica in enumerate(replicas):
        for i in range(100):
            replica.append(b"replica %d receipt %d" % (n, i))
    for _ in range(2):
        for replica in replicas:
            replica.turn()
    sizes = {r.tree.size for r in replicas}
    roots = {r.tree.root() for r in replicas}
    assert sizes == {300} and len(roots) == 1  # every entry once, one history
    assert len({r.checkpoint for r in replicas}) == 1
    assert sorted(replicas[2].store.entries(0)) == sorted(
        b"replica %d receipt %d" % (n, i) for n in range(3) for i in range(100))


def test_a_checkpoint_is_signed_again_when_it_is_due_even_if_the_log_did_not_grow(
        tmp_path) -> None:
    now = [1000.0]
    log = TransparencyLog(LogStore(f"sqlite:///{tmp_path / 'log.db'}"), KEY,
                          clock=lambda: now[0])
    log.turn()
    first = log.checkpoint
    assert first is not None and log.signed_at == 1000.0
    now[0] += 10
    log.turn()
    assert log.signed_at == 1000.0  # nothing new, not due
    now[0] += CHECKPOINT_SECONDS
    log.turn()
    assert log.signed_at == now[0] <= 1000.0 + 60  # at least every 60 s
    assert log.checkpoint is not None and log.checkpoint != first
    again = Checkpoint.parse(Note.parse(log.checkpoint).text)
    assert signed_time(again) == int(now[0]) and again.size == 0
