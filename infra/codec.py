"""AES-256-GCM encryption of Temporal payloads, with key ids for rotation.

Temporal stores every workflow input, result, activity argument, memo, update and (through the
encoded-attributes failure converter) failure message in its history in the clear, and
:mod:`infra.payloads` stores large ones in the job database. :class:`EncryptionCodec` is a
``PayloadCodec``: the data converter runs it on each payload before external storage, so both the
history and the ``payloads`` table hold ciphertext (see :mod:`infra.temporal` for the order).

Format of an encrypted payload:

- ``metadata["encoding"] = b"binary/encrypted"`` and ``metadata["encryption-key-id"] = <kid>``;
- ``data = nonce (12 random bytes) || AES-256-GCM(serialized original Payload) || tag (16)``,
  with the key id as authenticated data, so a payload cannot be relabelled to another key id,
  and any change to nonce, ciphertext or tag fails decryption.

Decoding passes payloads without that encoding through unchanged, so histories written before
encryption was switched on still read. Key rotation: add the new key to
``AGENTFLOW_PAYLOAD_ENCRYPTION_KEYS``, make it ``AGENTFLOW_PAYLOAD_ENCRYPTION_KEY_ID``, and keep
the old one until no open workflow (or retained history) holds payloads under it.

Hazards:

- Each payload gets a fresh random nonce, so two encryptions of the same payload differ: the
  content-addressed ``payloads`` table no longer deduplicates equal large payloads (each store is
  a new row). Deterministic encryption would restore that but reveal which payloads are equal.
- With 96-bit random nonces one key must not encrypt more than about 2**32 payloads; rotate well
  before that.
- Key ids, payload sizes, workflow and activity type names, search attributes and ids stay in the
  clear: Temporal needs them to route work.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Mapping, Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from google.protobuf.message import DecodeError
from temporalio.api.common.v1 import Payload
from temporalio.converter import PayloadCodec

from core.errors import AgentflowError, ErrorType
from core.settings import Settings

ENCODING = b"binary/encrypted"
"""``metadata["encoding"]`` of an encrypted payload (the name Temporal's samples use)."""

KEY_ID_METADATA = "encryption-key-id"
"""Metadata key naming the key id a payload was encrypted under."""

KEY_BYTES = 32
"""AES-256 key length in bytes."""

NONCE_BYTES = 12
"""GCM nonce length in bytes, prefixed to the ciphertext."""

TAG_BYTES = 16
"""GCM authentication tag length in bytes, at the end of the ciphertext."""

AAD_PREFIX = b"agentflow.payload.v1:"
"""Authenticated data is this prefix plus the key id (UTF-8)."""

KEY_ID_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,64}")
"""Allowed key ids: they travel in clear metadata and in settings."""

KEYS_SETTING = "AGENTFLOW_PAYLOAD_ENCRYPTION_KEYS"
KEY_ID_SETTING = "AGENTFLOW_PAYLOAD_ENCRYPTION_KEY_ID"


class PayloadDecryptionError(AgentflowError, ValueError):
    """An encrypted payload cannot be decrypted.

    Raised for an unknown or missing key id, a truncated payload, or a failed authentication
    (the payload was changed, or encrypted under a different key with the same id). Retrying
    cannot help; the message names the key id at most, never key material or payload bytes.
    """

    type = ErrorType.PAYLOAD_DECRYPTION_FAILED
    retryable = False


def generate_key() -> str:
    """A new random AES-256 key for ``AGENTFLOW_PAYLOAD_ENCRYPTION_KEYS``.

    Returns:
        Standard base64 of 32 bytes from the operating system's CSPRNG (44 characters).
    """
    return base64.b64encode(os.urandom(KEY_BYTES)).decode("ascii")


def _aad(key_id: str) -> bytes:
    return AAD_PREFIX + key_id.encode("utf-8")


class EncryptionCodec(PayloadCodec):
    """A Temporal ``PayloadCodec`` encrypting each payload with AES-256-GCM.

    Args:
        keys: raw keys by key id; each value must be exactly 32 bytes. Every key decrypts; only
            ``active_key_id`` encrypts.
        active_key_id: the key id new payloads are encrypted under.

    Raises:
        ValueError: ``keys`` is empty, a key id is not 1-64 of ``[A-Za-z0-9._-]``, a key is not
            32 bytes, or ``active_key_id`` is not in ``keys``.
    """

    def __init__(self, keys: Mapping[str, bytes], active_key_id: str) -> None:
        if not keys:
            raise ValueError("EncryptionCodec needs at least one key")
        for key_id, key in keys.items():
            if not KEY_ID_PATTERN.fullmatch(key_id):
                raise ValueError(f"key id {key_id!r} must be 1-64 of [A-Za-z0-9._-]")
            if len(key) != KEY_BYTES:
                raise ValueError(f"key {key_id!r} must be {KEY_BYTES} bytes, got {len(key)}")
        if active_key_id not in keys:
            raise ValueError(f"active key id {active_key_id!r} is not among the keys")
        self._ciphers = {key_id: AESGCM(bytes(key)) for key_id, key in keys.items()}
        self._active_key_id = active_key_id
        self._active = self._ciphers[active_key_id]
        self._active_aad = _aad(active_key_id)
        self._active_key_id_bytes = active_key_id.encode("utf-8")

    @property
    def active_key_id(self) -> str:
        """The key id new payloads are encrypted under."""
        return self._active_key_id

    @property
    def key_ids(self) -> frozenset[str]:
        """Every key id this codec can decrypt."""
        return frozenset(self._ciphers)

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        """Encrypt each payload under the active key (one output per input, in order)."""
        return [self.encrypt(p) for p in payloads]

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        """Decrypt encrypted payloads; pass every other payload through unchanged.

        Raises:
            PayloadDecryptionError: an encrypted payload has an unknown key id or fails
                authentication (non-retryable).
        """
        return [self.decrypt(p) for p in payloads]

    def encrypt(self, payload: Payload) -> Payload:
        """The encrypted form of one payload (the whole ``Payload`` proto, metadata included)."""
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._active.encrypt(nonce, payload.SerializeToString(), self._active_aad)
        return Payload(
            metadata={"encoding": ENCODING, KEY_ID_METADATA: self._active_key_id_bytes},
            data=nonce + sealed,
        )

    def decrypt(self, payload: Payload) -> Payload:
        """The original payload of an encrypted one; any other payload as it is.

        Raises:
            PayloadDecryptionError: unknown or missing key id, truncated data, or failed
                authentication.
        """
        if payload.metadata.get("encoding") != ENCODING:
            return payload
        raw_key_id = payload.metadata.get(KEY_ID_METADATA)
        if raw_key_id is None:
            raise PayloadDecryptionError("encrypted payload carries no encryption key id")
        key_id = raw_key_id.decode("utf-8", errors="replace")
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            raise PayloadDecryptionError(
                f"payload is encrypted with unknown key id {key_id[:64]!r}; add that key to "
                f"{KEYS_SETTING}"
            )
        data = payload.data
        if len(data) < NONCE_BYTES + TAG_BYTES:
            raise PayloadDecryptionError(f"encrypted payload under key {key_id!r} is truncated")
        try:
            plain = cipher.decrypt(data[:NONCE_BYTES], data[NONCE_BYTES:], _aad(key_id))
            return Payload.FromString(plain)
        except (InvalidTag, DecodeError) as exc:
            raise PayloadDecryptionError(
                f"encrypted payload under key {key_id!r} failed authentication (changed, or "
                "encrypted with a different key of that id)"
            ) from exc


def _decode_key(key_id: str, encoded: str) -> bytes:
    try:
        key = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"{KEYS_SETTING}[{key_id!r}] is not valid base64") from exc
    if len(key) != KEY_BYTES:
        raise ValueError(
            f"{KEYS_SETTING}[{key_id!r}] must be base64 of {KEY_BYTES} bytes, got {len(key)} "
            "bytes (make one with infra.codec.generate_key())"
        )
    return key


def codec_from_settings(settings: Settings) -> EncryptionCodec | None:
    """The codec the settings describe, or ``None`` when no key is configured.

    Args:
        settings: ``payload_encryption_keys`` (key id to base64 of 32 bytes) and
            ``payload_encryption_key_id`` (the active one; may be unset with a single key).

    Returns:
        An :class:`EncryptionCodec`, or ``None`` when ``payload_encryption_keys`` is empty.

    Raises:
        ValueError: at start-up, naming the setting: a key that is not base64 of 32 bytes, a bad
            key id, several keys and no active id, an active id that names no key, or an active
            id without keys. Messages never contain key material.
    """
    configured = settings.payload_encryption_keys
    active = settings.payload_encryption_key_id
    if not configured:
        if active is not None:
            raise ValueError(f"{KEY_ID_SETTING} is set but {KEYS_SETTING} is empty")
        return None
    keys: dict[str, bytes] = {}
    for key_id, secret in configured.items():
        if not KEY_ID_PATTERN.fullmatch(key_id):
            raise ValueError(f"{KEYS_SETTING}: key id {key_id!r} must be 1-64 of [A-Za-z0-9._-]")
        keys[key_id] = _decode_key(key_id, secret.get_secret_value())
    if active is None:
        if len(keys) > 1:
            raise ValueError(
                f"{KEY_ID_SETTING} must name the active key when {KEYS_SETTING} holds several"
            )
        active = next(iter(keys))
    elif active not in keys:
        raise ValueError(f"{KEY_ID_SETTING} {active!r} names no key in {KEYS_SETTING}")
    return EncryptionCodec(keys, active)
