"""The Atoma confidential envelope (seeds 003/004): the envelope's crypto
(`envelope`) and the dialect's two sides (`dialect`)."""

from enclave.atoma.dialect import (
    ENGINE_PATHS,
    LOCK_PATH,
    MAX_LOCK_BODY,
    NODE_PATH,
    AtomaClient,
    AtomaServer,
)
from enclave.atoma.envelope import (
    OPEN_FAILED,
    ClientSession,
    ConfidentialRequest,
    EnvelopeSealer,
    InvalidBody,
    NodeSigner,
    StaleNodeKey,
    open_request,
)

__all__ = ["ENGINE_PATHS", "LOCK_PATH", "MAX_LOCK_BODY", "NODE_PATH", "OPEN_FAILED",
           "AtomaClient", "AtomaServer", "ClientSession", "ConfidentialRequest",
           "EnvelopeSealer", "InvalidBody", "NodeSigner", "StaleNodeKey", "open_request"]
