"""The gateway's configuration: one frozen value, `ServeConfig`, made of sections.

Each field is written once (`gateway.options.option`): its default, its help text, its
flag, its range, and whether it shapes the attested workload. `cloister serve --help`,
`--config FILE.toml` (one table a section: `[limits] max_in_flight = 64`) and the
workload manifest's `settings` all come from these fields. A new field is measured
unless it says why not (`unmeasured=`): that is how the fleet's trust anchors
(`--release-key`, `--join`) are now inside the identity they used to be beside.

`KeyholderConfig` is the keyholder's, from the same sections where they mean the same.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from attestation.providers import attestation_choices
from enclave.keys import DEFAULT_GRACE_SECONDS, DEFAULT_ROTATION_SECONDS
from enclave.padding import PaddingPolicy
from enclave.replay import DEFAULT_MAX_ENTRIES, DEFAULT_WINDOW_SECONDS
from enclave.sealed_state import SEV_GUEST
from gateway.options import ConfigError, option, workload_settings

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

# A 128k-token prompt is about 512 KiB of text; 4 MiB leaves room for JSON structure,
# long conversations and base64 overhead while keeping one request's buffer bounded.
DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
ATTESTATION_CHOICES = attestation_choices()

_ADDRESS = "where it listens, not what it does"
_MODEL = "named, with its digest and engine arguments, in the manifest's engine.models"


@dataclass(frozen=True)
class Listeners:
    host: str = option("127.0.0.1", "the address every listener binds", unmeasured=_ADDRESS)
    port: int = option(8000, "the public (OpenAI, dialects, attestation) listener's port",
                       minimum=0, unmeasured=_ADDRESS)
    tls: bool = option(False, "also serve HTTPS on --tls-port with a key made in the "
                              "enclave and bound in the attestation report; the /api/v1/ "
                              "platform API exists only there")
    tls_port: int = option(8443, "the TLS listener's port", minimum=0, unmeasured=_ADDRESS)
    tls_host: tuple[str, ...] = option(
        (), "a name or address the TLS certificate is for (repeatable; default the --host "
            "and localhost)", unmeasured="the certificate's names; its key is what the "
                                         "report binds")
    forwarded_allow_ips: str | None = option(
        None, "trust X-Forwarded-* headers only from these addresses (a front the operator "
              "runs); off by default")


def _known_answer(text: str) -> str:
    if text != "auto" and (len(text) != 64 or any(c not in "0123456789abcdef" for c in text)):
        raise ValueError("auto or 64 lowercase hex digits")
    return text


@dataclass(frozen=True)
class Model:
    model: str | None = option(None, "local path or hub name (downloaded first, then served "
                                     "from the verified local copy); default: the offline "
                                     "demo model", unmeasured=_MODEL)
    served_model_name: str | None = option(None, "the name clients ask for",
                                           unmeasured=_MODEL)
    embedding_model: str = option("auto", "'auto' (packaged all-MiniLM-L6-v2 if installed), "
                                          "'none', or a path or hub name", unmeasured=_MODEL)
    model_digest: str | None = option(None, "refuse to serve a model whose digest differs",
                                      metavar="sha256:HEX", unmeasured=_MODEL)
    model_signature: Path | None = option(
        None, "an OpenSSF model signature to verify (offline) before serving",
        unmeasured="its signer is named in engine.models")
    model_signing_key: Path | None = option(
        None, "the signer's public key (PEM) for --model-signature",
        unmeasured="its signer is named in engine.models")
    model_signing_certificate_chain: tuple[Path, ...] = option(
        (), "a certificate chain (PEM) that --model-signature's certificate must chain to "
            "(repeatable)", unmeasured="its signer is named in engine.models")
    model_verity_root: str | None = option(
        None, "the dm-verity root hash of the read-only volume the model is served from "
              "(deploy/model-volume.sh)", metavar="HEX", unmeasured=_MODEL)
    known_answer: str = option(
        "auto", "the digest of the engine's answer to the known-answer prompt "
                "(gateway/known_answer.py): 'auto' (the one recorded for this model on this "
                "engine kind, if any), or 64 hex digits", metavar="auto|HEX",
        parse=_known_answer)
    cc_profile: bool = option(
        False, "the engine options GPU confidential computing needs: async scheduling, "
               "tokens streamed 8 at a time, no CPU offload, no custom all-reduce (README)")
    known_answer_seconds: float = option(
        600.0, "seconds between known-answer checks of the engine (the first before "
               "/ready)", minimum=1)
    engine_args: tuple[str, ...] = option(
        (), "after `--`: arguments for the vLLM engine (e.g. --max-model-len); only an "
            "allow-list of them is accepted inside the enclave", positional=True,
        unmeasured=_MODEL)


@dataclass(frozen=True)
class Limits:
    insecure_plaintext: bool = option(False, "DEVELOPMENT ONLY: accept plaintext OpenAI "
                                             "requests")
    max_body_bytes: int = option(DEFAULT_MAX_BODY_BYTES, "the largest request body",
                                 minimum=1)
    max_tokens: int | None = option(None, "cap on max_tokens a request may ask for",
                                    minimum=1)
    max_in_flight: int = option(256, "requests served at once before 503 overloaded",
                                minimum=1)
    max_per_client: int = option(64, "concurrent requests per client before 429", minimum=1)
    max_engine_queue: int = option(512, "engine backlog past which new work gets 503",
                                   minimum=1)
    secrets_per_client: int = option(64, "Continuum secrets one client may hold at once",
                                     minimum=1)
    secret_registrations_per_second: float = option(
        2.0, "Continuum secret registrations a client may make a second", minimum=0)
    secret_registration_burst: int = option(20, "Continuum secret registrations a client "
                                                "may make in one burst", minimum=1)


@dataclass(frozen=True)
class Timeouts:
    body_timeout: float = option(30.0, "seconds a client has to send its whole body (408 "
                                       "after)", minimum=0)
    head_timeout: float = option(10.0, "seconds a connection has to send a complete request "
                                       "head (closed after; heads over 32 KiB are refused "
                                       "with 400)", minimum=0)
    write_timeout: float = option(20.0, "seconds a stream may wait on a reader that stopped "
                                        "reading (then its engine request is aborted and its "
                                        "slot freed)", minimum=0)
    shutdown_grace: float = option(30.0, "seconds in-flight streams get to finish on SIGTERM",
                                   minimum=0, unmeasured="how long a stop waits")


@dataclass(frozen=True)
class SideChannels:
    padding: PaddingPolicy = option(PaddingPolicy(), "pad every sealed plaintext to a size "
                                                     "bucket", metavar="off|pow2:N|fixed:N",
                                    parse=PaddingPolicy.parse, measure=str)
    stream_interval_ms: float = option(50.0, "send streamed tokens together every interval "
                                             "(0: as they come)", minimum=0)
    constant_rate: bool = option(False, "send a padded chunk every stream interval, token "
                                        "or not")


@dataclass(frozen=True)
class Replay:
    replay_window_seconds: float = option(
        DEFAULT_WINDOW_SECONDS, "refuse requests dated further than this from the gateway's "
                                "clock", minimum=0)
    replay_cache_entries: int = option(
        DEFAULT_MAX_ENTRIES, "requests remembered against replays (about 200 bytes each; "
                             "a quarter at most per client)", minimum=1)


@dataclass(frozen=True)
class Keys:
    key_rotation_seconds: float = option(DEFAULT_ROTATION_SECONDS, "a new HPKE key (and key "
                                                                   "id) this often", minimum=1)
    key_grace_seconds: float = option(DEFAULT_GRACE_SECONDS, "how long the previous key is "
                                                             "still accepted", minimum=0)


def _simulated_pin(text: str) -> str:
    if text not in ("auto", "none"):
        bytes.fromhex(text)  # ValueError: not hex
    return text


@dataclass(frozen=True)
class Attestation:
    attestation: str = option("auto", "evidence source; auto refuses to start without "
                                      "confidential hardware", choices=ATTESTATION_CHOICES)
    reference_values: tuple[Path, ...] = option(
        (), "a signed release statement: served to clients, and what a fleet member accepts "
            "of the other side (repeatable; `cloister release sign` makes one)",
        metavar="STATEMENT.json",
        unmeasured="a statement names this workload's digest; what may sign one (the "
                   "release keys) is measured")
    pccs_url: str | None = option(None, "TDX: where to fetch Intel collateral (PCS API v4 or "
                                        "a PCCS; default Intel's PCS)", metavar="URL",
                                  unmeasured="collateral is verified against Intel's root")
    amd_kds_url: str | None = option(None, "SEV-SNP: where to fetch AMD's CRL (default "
                                           "AMD's KDS)", metavar="URL",
                                     unmeasured="the CRL is verified against AMD's root")
    launch_init_data: Path | None = option(
        None, "Confidential Containers: the init-data document whose hash the host put in "
              "HOST_DATA / MRCONFIGID (it names the workload digest)",
        unmeasured="it names this workload's digest")
    simulated_host_data: str = option(
        "auto", "with the simulated TEE: what the simulated host pinned at launch (auto: "
                "this workload's digest; none: nothing)", metavar="auto|none|HEX",
        parse=_simulated_pin, unmeasured="what the (simulated) host pinned at launch")

    @property
    def simulated(self) -> bool:
        return self.attestation.startswith("simulated")

    def collateral_services(self) -> dict[str, str]:
        """The vendors' collateral services the operator named (by vendor)."""
        named = {"intel": self.pccs_url, "amd": self.amd_kds_url}
        return {vendor: url for vendor, url in named.items() if url}

    def simulated_pin(self, digest: bytes) -> bytes:
        """What the simulated host pinned at launch, for a workload of `digest`."""
        choice = self.simulated_host_data
        if choice == "auto":
            return digest
        return b"" if choice == "none" else bytes.fromhex(choice)


def _data_key_kind(choice: str) -> str:
    kind = choice.split(":")[0]
    if kind == "auto":
        return "snp" if os.path.exists(SEV_GUEST) else "file"
    return kind


def _database_kind(url: str | None) -> str:
    return (url or "sqlite").split(":")[0].split("+")[0]


def _data_key(text: str) -> str:
    if text not in ("auto", "snp") and not text.startswith("file:"):
        raise ValueError("snp, file:PATH or auto")
    return text


@dataclass(frozen=True)
class Store:
    state_dir: Path | None = option(None, "state folder (default $CLOISTER_STATE or "
                                          "~/.local/state/cloister)",
                                    unmeasured="a folder; what is in it is sealed")
    database: str | None = option(None, "SQLAlchemy URL (default: SQLite in the state "
                                        "folder; a PostgreSQL URL for several replicas)",
                                  measure=_database_kind)
    data_key: str = option("auto", "what seals stored conversations: 'snp' (the firmware's "
                                   "derived key), 'file:PATH', or 'auto' (snp on SNP, else "
                                   "the simulated TEE's key file)", metavar="auto|snp|file:PATH",
                           parse=_data_key, measure=_data_key_kind)

    def folder(self) -> Path:
        if self.state_dir is not None:
            return Path(self.state_dir)
        base = os.environ.get("CLOISTER_STATE") or os.path.expanduser("~/.local/state/cloister")
        return Path(base)


def _release_key_ids(paths: tuple[Path, ...]) -> list[str]:
    """The fleet's trust anchors, measured by what they are: the sorted ids (SHA-256 of
    the SubjectPublicKeyInfo) of every key in the files, whatever their PEM spelling."""
    from attestation.statement import load_public_keys

    ids: set[str] = set()
    for path in paths:
        try:
            keys = load_public_keys(path.read_bytes())
        except ValueError as exc:
            raise ConfigError(f"fleet.release_key (--release-key): {path}: {exc}") from None
        if not keys:
            raise ConfigError(f"fleet.release_key (--release-key): {path} holds no public "
                              "key (`cloister release keygen` writes one)")
        ids.update(keys)
    return sorted(ids)


@dataclass(frozen=True)
class Fleet:
    join: tuple[str, ...] = option(
        (), "a fleet member: obtain the fleet's seed from this attested keyholder "
            "(repeatable) and derive every key from it", metavar="URL",
        manifest_name="fleet_member", measure=bool)
    release_key: tuple[Path, ...] = option(
        (), "the keys the --reference-values statements a fleet member accepts are signed "
            "with (repeatable); measured by key id, so the operator cannot swap them",
        manifest_name="release_key_ids", measure=_release_key_ids)
    min_statement_version: int = option(
        0, "a fleet member refuses statements below this version, at every join and "
           "release; measured, so a rollback needs a new workload", minimum=0)


def admin_public_key(path: Path) -> Ed25519PublicKey:
    """The operator's admin key from its PEM file; `ConfigError` unless it is Ed25519."""
    from cryptography.hazmat.primitives.asymmetric import ed25519
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    key = load_pem_public_key(path.read_bytes())
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise ConfigError("admin.admin_public_key (--admin-public-key) must be an Ed25519 "
                          "public key (`cloister admin keygen`)")
    return key


def _admin_key_id(path: Path | None) -> str | None:
    """Who may administer this gateway: the SHA-256 of the pinned admin public key."""
    from enclave.admin_signature import key_id

    return None if path is None else key_id(admin_public_key(path))


@dataclass(frozen=True)
class Metrics:
    metrics_port: int | None = option(None, "serve /metrics on this port (a scrape-only "
                                            "listener)", minimum=0,
                                      manifest_name="metrics_listener",
                                      measure=lambda port: port is not None)
    metrics_host: str = option("127.0.0.1", "the metrics listener's address",
                               unmeasured=_ADDRESS)
    metrics_token_file: Path | None = option(
        None, "also serve /metrics on the public listener, to requests that carry this "
              "file's token as `Authorization: Bearer`",
        manifest_name="metrics_on_public_listener", measure=lambda path: path is not None)
    log_level: str = option("info", "the log level", measure=str.lower)


@dataclass(frozen=True)
class Admin:
    admin_public_key: Path | None = option(
        None, "the operator's Ed25519 admin key (`cloister admin keygen`): signed admin "
              "requests on the TLS listener; pinned in the workload manifest",
        manifest_name="admin_key_sha256", measure=_admin_key_id)


@dataclass(frozen=True)
class Process:
    workers: int = option(1, "gateway processes (HTTP, crypto, framing) in front of one "
                             "engine core per model, on vLLM's multi-API-server machinery; "
                             "they share keys, replay records, state and metrics",
                          metavar="N", minimum=1,
                          unmeasured="how many processes serve the same workload")


class _Sections:
    """What every configuration of sections has."""

    @classmethod
    def of(cls, **flat: Any) -> Self:
        """From option names alone: `ServeConfig.of(max_in_flight=2)`."""
        from gateway.options import of

        config: Self = of(cls, **flat)
        return config

    def workload_settings(self) -> dict[str, Any]:
        """The manifest's `settings`: every field that shapes the workload."""
        return workload_settings(self)


@dataclass(frozen=True)
class ServeConfig(_Sections):
    """Everything `cloister serve` is told, fixed at start."""

    listeners: Listeners = field(default_factory=Listeners)
    model: Model = field(default_factory=Model)
    limits: Limits = field(default_factory=Limits)
    timeouts: Timeouts = field(default_factory=Timeouts)
    side_channels: SideChannels = field(default_factory=SideChannels)
    replay: Replay = field(default_factory=Replay)
    keys: Keys = field(default_factory=Keys)
    attestation: Attestation = field(default_factory=Attestation)
    store: Store = field(default_factory=Store)
    fleet: Fleet = field(default_factory=Fleet)
    metrics: Metrics = field(default_factory=Metrics)
    admin: Admin = field(default_factory=Admin)
    process: Process = field(default_factory=Process)

    def same_workload(self, other: ServeConfig) -> bool:
        return self.workload_settings() == other.workload_settings()

    def check(self) -> None:
        """What no single field can say; `ConfigError`."""
        from attestation.verify import MAX_KEY_LIFETIME

        keys = self.keys
        if keys.key_grace_seconds > keys.key_rotation_seconds:
            raise ConfigError("--key-grace-seconds must not exceed --key-rotation-seconds")
        if keys.key_rotation_seconds + keys.key_grace_seconds > MAX_KEY_LIFETIME:
            raise ConfigError("--key-rotation-seconds plus --key-grace-seconds must not "
                              f"exceed {MAX_KEY_LIFETIME} s: clients refuse reports that "
                              "vouch for keys longer")


@dataclass(frozen=True)
class KeyholderListeners:
    host: str = option("127.0.0.1", "the address the keyholder listens on",
                       unmeasured=_ADDRESS)
    port: int = option(8100, "its port", minimum=0, unmeasured=_ADDRESS)


@dataclass(frozen=True)
class KeyholderState:
    state_dir: Path | None = option(None, "state folder (default $CLOISTER_STATE or "
                                          "~/.local/state/cloister)",
                                    unmeasured="a folder; nothing of the seed is kept")
    database: str | None = option(None, "SQLAlchemy URL of the audit log (default: SQLite "
                                        "in the state folder; a PostgreSQL URL for "
                                        "several keyholders keeping one log)",
                                  measure=_database_kind)

    def folder(self) -> Path:
        return Store(state_dir=self.state_dir).folder()


@dataclass(frozen=True)
class KeyholderConfig(_Sections):
    """Everything `cloister keyholder` is told: it holds a fleet's seed and releases it to
    the workloads its reference values name, signed by its (measured) release keys."""

    listeners: KeyholderListeners = field(default_factory=KeyholderListeners)
    attestation: Attestation = field(default_factory=Attestation)
    store: KeyholderState = field(default_factory=KeyholderState)
    fleet: Fleet = field(default_factory=Fleet)

    def workload_settings(self) -> dict[str, Any]:
        return {"role": "keyholder", **super().workload_settings()}
