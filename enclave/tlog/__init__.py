"""The transparency log of receipts and release statements, in the formats existing
tooling reads: RFC 9162 Merkle trees (`merkle`), C2SP signed notes, checkpoints and
cosignatures (`note`), C2SP tlog-tiles (`tiles`). Sans-IO: bytes in, bytes out; the
gateway stores and serves the log (`gateway.tlog`), clients check it (`proxy.logview`)."""
