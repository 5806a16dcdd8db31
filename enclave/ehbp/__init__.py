"""EHBP, Tinfoil's encrypted HTTP body protocol: sans-IO, both sides: the protocol
(`frames`) and the dialect's two sides (`dialect`), laid out as the other dialects are.

Constants MUST NOT diverge from Tinfoil's ehbp `protocol.py` (DESIGN section 4):
    keys     GET /.well-known/hpke-keys as application/ohttp-keys: ONE bare key
             configuration (no length prefix, exactly one suite; Tinfoil's
             `ServerIdentity.unmarshal_public_config`), key_id 0,
             X25519 / HKDF-SHA256 / AES-256-GCM
    request  header Ehbp-Encapsulated-Key: hex(enc); SetupBaseS(pk, info="ehbp request");
             body = {u32 BE length || HPKE-Seal(aad="", chunk)}*
    response header Ehbp-Response-Nonce: hex(32 random bytes);
             secret = Export("ehbp response", 32); prk = Extract(enc || nonce, secret);
             key = Expand(prk, "key", 32); base = Expand(prk, "nonce", 12);
             frame i = u32 BE length || Seal(key, base XOR i, "", chunk)
    stale key  422 application/problem+json, type urn:ietf:params:ehbp:error:key-config
Known weaknesses, kept for compatibility: status and headers travel in the clear, so a
man in the middle can change the status of a sealed answer (the client refuses a
non-200 status unless the sealed body is an error object), and there is no
authenticated end of stream, so a response cut at a frame boundary cannot be told from
a complete one (by Tinfoil's clients: ours, once it has verified the gateway, requires
the receipt frame that ends every stream, `enclave.ehbp.dialect`). A response with no
frame at all is refused. Our own dialects (OHTTP,
Continuum, Atoma with its sequence numbers) do not share these.
"""

from enclave.ehbp.dialect import (
    NAME,
    EhbpClient,
    EhbpKeys,
    EhbpOpener,
    EhbpResponder,
    EhbpServer,
    client,
    server,
)
from enclave.ehbp.frames import (
    ENCAPSULATED_KEY_HEADER,
    KEY_CONFIG_PROBLEM_TYPE,
    KEYS_PATH,
    MAX_FRAME_SIZE,
    RESPONSE_NONCE_HEADER,
    SUITE,
    FrameOpener,
    FrameSealer,
    FrameSplitter,
    RequestSealer,
    frame,
    key_config,
    open_request,
)

__all__ = ["ENCAPSULATED_KEY_HEADER", "KEYS_PATH", "KEY_CONFIG_PROBLEM_TYPE", "MAX_FRAME_SIZE",
           "NAME", "RESPONSE_NONCE_HEADER", "SUITE", "EhbpClient", "EhbpKeys", "EhbpOpener",
           "EhbpResponder", "EhbpServer", "FrameOpener", "FrameSealer", "FrameSplitter",
           "RequestSealer", "client", "frame", "key_config", "open_request", "server"]
