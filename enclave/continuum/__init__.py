"""The Continuum encrypted-field dialect (seeds 000/001): the field crypto and secret
store (`fields`) and the dialect's two sides (`dialect`)."""

from enclave.continuum.dialect import (
    ERROR_FIELD,
    HYBRID_KEY_PATH,
    MAX_SECRET_BODY,
    SECRETS_PATH,
    ContinuumClient,
    ContinuumServer,
)
from enclave.continuum.fields import (
    PROMPT_FIELDS,
    RESULT_FIELDS,
    SECRET_SIZE,
    FieldCipher,
    SealedField,
    SecretStore,
    is_encrypted_field,
    open_secret,
    seal_secret,
    seal_secret_hybrid,
)

__all__ = ["ERROR_FIELD", "HYBRID_KEY_PATH", "MAX_SECRET_BODY", "PROMPT_FIELDS",
           "RESULT_FIELDS", "SECRETS_PATH", "SECRET_SIZE", "ContinuumClient",
           "ContinuumServer", "FieldCipher", "SealedField", "SecretStore",
           "is_encrypted_field", "open_secret", "seal_secret", "seal_secret_hybrid"]
