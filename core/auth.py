"""Who is calling: API-key scopes and the principal a request acts as.

A key carries scopes; a route needs one (:func:`api.deps.require_scope`). ``admin`` implies every
other scope and sees every job; any other key sees only the jobs it submitted. The principal's
``key_id`` is what jobs record as their owner, and its :attr:`Principal.identity` is the reviewer
of the approvals it decides.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, Field


class Scope(StrEnum):
    """What a key may do.

    ``submit``: start jobs (``POST /v1/jobs``). ``read``: read and list its own jobs.
    ``approve``: decide on and cancel its own jobs. ``admin``: everything, on every job, plus the
    codec endpoints.
    """

    SUBMIT = "submit"
    READ = "read"
    APPROVE = "approve"
    ADMIN = "admin"


ANONYMOUS_KEY_ID = "anonymous"
"""The principal every request acts as when ``AGENTFLOW_AUTH_DISABLED`` is set."""


class Principal(BaseModel):
    """The caller a request acts as.

    Attributes:
        key_id: the key's public id (``af_`` plus 12 characters), recorded as each job's owner.
        name: the name given when the key was created.
        scopes: what the key may do.
        rate_limit_per_minute: the key's own request limit; ``None``: the server default.
        daily_budget_usd: the key's own daily budget in USD; ``None``: the server default.
    """

    key_id: str
    name: str
    scopes: frozenset[Scope] = Field(default_factory=frozenset)
    rate_limit_per_minute: int | None = None
    daily_budget_usd: float | None = None

    @property
    def is_admin(self) -> bool:
        """Whether the key has ``admin`` (every scope, every job)."""
        return Scope.ADMIN in self.scopes

    def allows(self, scope: Scope) -> bool:
        """Whether the key may act with ``scope`` (``admin`` allows everything)."""
        return self.is_admin or scope in self.scopes

    def owns(self, owner: str | None) -> bool:
        """Whether a job recorded with ``owner`` is visible to this key.

        Admin keys see every job; other keys only jobs they submitted. Jobs without an owner
        (submitted while authentication was off, or before keys existed) are admin-only.
        """
        return self.is_admin or (owner is not None and owner == self.key_id)

    @property
    def identity(self) -> str:
        """How the key appears as a reviewer: ``name (key_id)``."""
        return f"{self.name} ({self.key_id})"


def anonymous() -> Principal:
    """The admin principal used for every request while authentication is switched off."""
    return Principal(key_id=ANONYMOUS_KEY_ID, name=ANONYMOUS_KEY_ID, scopes=frozenset(Scope))
