"""Large payloads kept out of Temporal history, in the job database.

Temporal refuses a payload over 2 MB and slows down well before that, so the data converter's
``ExternalStorage`` hands every payload over ``AGENTFLOW_LARGE_PAYLOAD_THRESHOLD_BYTES`` to
:class:`DatabasePayloadDriver`, which stores the serialized ``Payload`` under the SHA-256 of its
bytes and leaves only a small reference in history. Storage is content-addressed, so storing the
same payload twice is one row, and workflow code never sees the difference. Only the data
converter creates references: client input is one JSON payload and can never name a stored row.

:func:`read_legacy_blob` reads the ``blobs`` table that agentflow used for pass-by-reference before
``ExternalStorage``; jobs started then may still hold such references until they finish.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import Engine, LargeBinary, Text
from sqlalchemy.exc import IntegrityError
from sqlmodel import Field, Session, SQLModel
from temporalio.api.common.v1 import Payload
from temporalio.converter import (
    StorageDriver,
    StorageDriverClaim,
    StorageDriverRetrieveContext,
    StorageDriverStoreContext,
)

from core.errors import AgentflowError, BlobNotFoundError, ErrorType
from infra.db import UTCDateTime, translate_errors, utc_now

CLAIM_KEY = "sha256"
"""The claim field naming a stored payload: the hex SHA-256 of its serialized bytes."""


class PayloadRecord(SQLModel, table=True):
    """One serialized Temporal ``Payload``.

    Attributes:
        sha256: hex SHA-256 of ``data``, the primary key.
        size_bytes: length of ``data``.
        data: the serialized ``temporalio.api.common.v1.Payload``.
        created_at: when it was last stored (aware UTC; a history that stores the same bytes
            again refreshes it), for retention.
    """

    __tablename__ = "payloads"

    sha256: str = Field(primary_key=True, max_length=64)
    size_bytes: int
    data: bytes = Field(sa_type=LargeBinary)
    created_at: datetime = Field(default_factory=utc_now, sa_type=UTCDateTime)


class BlobRecord(SQLModel, table=True):
    """A text payload stored by agentflow before ``ExternalStorage`` (read-only now).

    Attributes:
        blob_id: SHA-256 hex digest of the UTF-8 content.
        size_bytes: length of the UTF-8 content in bytes.
    """

    __tablename__ = "blobs"

    blob_id: str = Field(primary_key=True, max_length=64)
    size_bytes: int
    content: str = Field(sa_type=Text)
    created_at: datetime = Field(default_factory=utc_now, sa_type=UTCDateTime)


class PayloadNotFoundError(AgentflowError, LookupError):
    """A history references a payload the database no longer holds (deleted or wrong database)."""

    type = ErrorType.PAYLOAD_NOT_FOUND
    retryable = False


class DatabasePayloadDriver(StorageDriver):
    """A Temporal ``StorageDriver`` on the job database (SQLite or PostgreSQL).

    Database calls run in a thread (``asyncio.to_thread``), one transaction per batch.

    Raises (from ``store``/``retrieve``):
        StoreUnavailableError: the database is down; the SDK fails the workflow task or the
            activity attempt, and Temporal retries it.
        PayloadNotFoundError: a claim names no stored payload.
    """

    def __init__(self, engine: Engine, *, name: str = "agentflow-db") -> None:
        """Store payloads through ``engine``; ``name`` is recorded in each reference."""
        self._engine = engine
        self._name = name

    def name(self) -> str:
        """The driver name recorded in history references."""
        return self._name

    def type(self) -> str:
        """A stable, language-neutral type name."""
        return "agentflow.database"

    async def store(
        self, context: StorageDriverStoreContext, payloads: Sequence[Payload]
    ) -> list[StorageDriverClaim]:
        """Store ``payloads``; returns one ``{"sha256": hex}`` claim per payload, in order."""
        blobs = [p.SerializeToString(deterministic=True) for p in payloads]
        return await asyncio.to_thread(self._store_sync, blobs)

    def _store_sync(self, blobs: list[bytes]) -> list[StorageDriverClaim]:
        digests = [hashlib.sha256(b).hexdigest() for b in blobs]
        with translate_errors(), Session(self._engine) as session:
            for digest, blob in zip(digests, blobs, strict=True):
                existing = session.get(PayloadRecord, digest)
                if existing is None:
                    session.add(PayloadRecord(sha256=digest, size_bytes=len(blob), data=blob))
                else:
                    # Stored again by a newer history: retention ages a payload from its
                    # latest use, so a reused payload outlives every history that names it.
                    existing.created_at = utc_now()
            try:
                session.commit()
            except IntegrityError:
                # A concurrent writer stored the same bytes first: same key, same content.
                session.rollback()
                for digest, blob in zip(digests, blobs, strict=True):
                    self._store_one(digest, blob)
        return [StorageDriverClaim(claim_data={CLAIM_KEY: d}) for d in digests]

    def _store_one(self, digest: str, blob: bytes) -> None:
        with Session(self._engine) as session:
            if session.get(PayloadRecord, digest) is not None:
                return
            session.add(PayloadRecord(sha256=digest, size_bytes=len(blob), data=blob))
            try:
                session.commit()
            except IntegrityError:
                session.rollback()

    async def retrieve(
        self, context: StorageDriverRetrieveContext, claims: Sequence[StorageDriverClaim]
    ) -> list[Payload]:
        """The payloads ``claims`` name, in order."""
        digests = [c.claim_data.get(CLAIM_KEY, "") for c in claims]
        blobs = await asyncio.to_thread(self._retrieve_sync, digests)
        return [Payload.FromString(b) for b in blobs]

    def _retrieve_sync(self, digests: list[str]) -> list[bytes]:
        with translate_errors(), Session(self._engine) as session:
            found: list[bytes] = []
            for digest in digests:
                record = session.get(PayloadRecord, digest)
                if record is None:
                    raise PayloadNotFoundError(f"stored payload {digest[:12]}... not found")
                found.append(record.data)
            return found


def read_legacy_blob(engine: Engine, blob_id: str) -> str:
    """The text of a pre-``ExternalStorage`` blob reference (jobs started before the upgrade).

    Raises:
        BlobNotFoundError: no such blob (non-retryable).
        StoreUnavailableError: the database is down (retryable).
    """
    with translate_errors(), Session(engine) as session:
        record = session.get(BlobRecord, blob_id)
    if record is None:
        raise BlobNotFoundError(f"blob {blob_id} not found")
    return record.content
