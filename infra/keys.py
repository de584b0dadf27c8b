"""API keys: created, listed and revoked by ``agentflow keys``, checked on every request.

A key is ``<key_id>.<secret>``: the key id (``af_`` plus 12 hex digits) is public and names the
key in lists, job records and logs; the secret (43 URL-safe characters, 256 random bits) is shown
once, at creation, and stored only as a digest. Because the secret is a long random string, not
a password, a slow password hash buys nothing: the digest is HMAC-SHA256 keyed with the server's
``AGENTFLOW_API_KEY_PEPPER`` (plain SHA-256 when no pepper is set; the scheme is stored per key),
compared in constant time. A stolen table therefore yields no usable key, and with a pepper not
even an offline check of a guessed one.

Every method is synchronous (call it from a thread in async code) and raises
:class:`core.errors.StoreUnavailableError` when the database is down.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine
from sqlmodel import Field, Session, SQLModel, col, select

from core.auth import Principal, Scope
from core.settings import Settings
from infra.db import UTCDateTime, translate_errors, utc_now

KEY_ID_PREFIX = "af_"
"""Every key id starts with this, so a leaked key is easy to recognise (and to scan for)."""


class ApiKeyRecord(SQLModel, table=True):
    """One API key, without its secret.

    Attributes:
        key_id: public id, ``af_`` plus 12 hex digits.
        name: what the key is for (shown as the reviewer of its approvals).
        scopes: comma-separated :class:`core.auth.Scope` values.
        secret_hash: hex digest of the secret (see ``hash_scheme``).
        hash_scheme: ``hmac-sha256`` (with the server's pepper) or ``sha256``.
        rate_limit_per_minute / daily_budget_usd: the key's own limits; ``None``: the defaults.
        created_at / revoked_at: aware UTC; a revoked key authenticates nothing.
    """

    __tablename__ = "api_keys"

    key_id: str = Field(primary_key=True, max_length=32)
    name: str = Field(max_length=200)
    scopes: str = Field(max_length=200)
    secret_hash: str = Field(max_length=128)
    hash_scheme: str = Field(max_length=32)
    rate_limit_per_minute: int | None = None
    daily_budget_usd: float | None = None
    created_at: datetime = Field(default_factory=utc_now, sa_type=UTCDateTime)
    revoked_at: datetime | None = Field(default=None, sa_type=UTCDateTime)

    def scope_set(self) -> frozenset[Scope]:
        """The key's scopes (unknown names from a newer version are ignored)."""
        known = {s.value for s in Scope}
        return frozenset(Scope(s) for s in self.scopes.split(",") if s in known)

    def principal(self) -> Principal:
        """The principal a request with this key acts as."""
        return Principal(
            key_id=self.key_id,
            name=self.name,
            scopes=self.scope_set(),
            rate_limit_per_minute=self.rate_limit_per_minute,
            daily_budget_usd=self.daily_budget_usd,
        )


@dataclass(frozen=True)
class CreatedKey:
    """A key just created: ``secret`` is the full key to hand to the client (shown once)."""

    secret: str
    record: ApiKeyRecord

    @property
    def key_id(self) -> str:
        """The key's public id."""
        return self.record.key_id


class KeyStore:
    """API keys in the job database (table ``api_keys``).

    Args:
        engine: the job database (tables created by :func:`infra.migrations.create_tables`).
        pepper: the server secret for HMAC-SHA256 digests (``AGENTFLOW_API_KEY_PEPPER``);
            ``None`` stores plain SHA-256 digests.
    """

    def __init__(self, engine: Engine, pepper: str | None = None) -> None:
        self._engine = engine
        self._pepper = pepper.encode() if pepper else None

    @classmethod
    def from_settings(cls, engine: Engine, settings: Settings) -> KeyStore:
        """The key store on ``engine`` with the settings' ``AGENTFLOW_API_KEY_PEPPER``."""
        pepper = settings.api_key_pepper
        return cls(engine, pepper=pepper.get_secret_value() if pepper else None)

    def _digest(self, secret: str, scheme: str) -> str | None:
        if scheme == "hmac-sha256":
            if self._pepper is None:
                return None  # created under a pepper this server does not have
            return hmac.new(self._pepper, secret.encode(), hashlib.sha256).hexdigest()
        if scheme == "sha256":
            return hashlib.sha256(secret.encode()).hexdigest()
        return None

    def create(
        self,
        name: str,
        scopes: Iterable[Scope],
        *,
        rate_limit_per_minute: int | None = None,
        daily_budget_usd: float | None = None,
    ) -> CreatedKey:
        """Create a key and return it with its secret (which is not stored).

        Args:
            name: what the key is for, 1-200 characters.
            scopes: at least one scope.
            rate_limit_per_minute: the key's own limit (requests per minute), ``None``: default.
            daily_budget_usd: the key's own budget (USD per UTC day), ``None``: default.

        Raises:
            ValueError: empty name or no scopes.
        """
        scope_set = sorted({Scope(s) for s in scopes})
        if not name.strip() or len(name) > 200:
            raise ValueError("a key needs a name of 1-200 characters")
        if not scope_set:
            raise ValueError("a key needs at least one scope")
        key_id = KEY_ID_PREFIX + secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        scheme = "hmac-sha256" if self._pepper else "sha256"
        digest = self._digest(secret, scheme)
        assert digest is not None
        record = ApiKeyRecord(
            key_id=key_id,
            name=name.strip(),
            scopes=",".join(s.value for s in scope_set),
            secret_hash=digest,
            hash_scheme=scheme,
            rate_limit_per_minute=rate_limit_per_minute,
            daily_budget_usd=daily_budget_usd,
        )
        with translate_errors(), Session(self._engine, expire_on_commit=False) as session:
            session.add(record)
            session.commit()
        return CreatedKey(secret=f"{key_id}.{secret}", record=record)

    def list_keys(self, *, include_revoked: bool = False) -> list[ApiKeyRecord]:
        """Every key, oldest first (revoked ones only when asked)."""
        statement = select(ApiKeyRecord).order_by(col(ApiKeyRecord.created_at))
        if not include_revoked:
            statement = statement.where(col(ApiKeyRecord.revoked_at).is_(None))
        with translate_errors(), Session(self._engine) as session:
            return list(session.exec(statement).all())

    def revoke(self, key_id: str) -> bool:
        """Revoke a key; ``False`` when no active key has that id."""
        with translate_errors(), Session(self._engine) as session:
            record = session.get(ApiKeyRecord, key_id)
            if record is None or record.revoked_at is not None:
                return False
            record.revoked_at = utc_now()
            session.add(record)
            session.commit()
            return True

    def authenticate(self, presented: str) -> Principal | None:
        """The principal of a presented key, or ``None`` when it is unknown, revoked or wrong.

        Args:
            presented: the full key as the client sent it (``<key_id>.<secret>``).
        """
        key_id, dot, secret = presented.partition(".")
        if not dot or not key_id.startswith(KEY_ID_PREFIX) or len(key_id) > 32 or not secret:
            return None
        with translate_errors(), Session(self._engine) as session:
            record = session.get(ApiKeyRecord, key_id)
        if record is None or record.revoked_at is not None:
            return None
        digest = self._digest(secret, record.hash_scheme)
        if digest is None or not hmac.compare_digest(digest, record.secret_hash):
            return None
        return record.principal()
