"""``Annotated`` dependency aliases for the routes: shared state, Temporal, the calling key.

Every route under ``/v1`` needs an API key (``Authorization: Bearer <key>`` or
``X-API-Key: <key>``) with the route's scope: 401 without a valid key, 403 without the scope
(:mod:`core.auth`). ``AGENTFLOW_AUTH_DISABLED=true`` makes every caller the ``anonymous`` admin,
for local development only.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Annotated, cast

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from temporalio.client import Client

from api.errors import ForbiddenError, UnauthorizedError
from api.state import AppState
from core.auth import Principal, Scope, anonymous


def get_state(request: Request) -> AppState:
    """The app's shared resources (set in the lifespan)."""
    return cast(AppState, request.app.state.agentflow)


async def get_temporal(request: Request) -> Client:
    """A connected Temporal client; 503 when Temporal is unreachable."""
    return await get_state(request).temporal.client()


StateDep = Annotated[AppState, Depends(get_state)]
TemporalDep = Annotated[Client, Depends(get_temporal)]

_bearer = HTTPBearer(auto_error=False, description="An agentflow API key (`agentflow keys`).")
_api_key_header = APIKeyHeader(
    name="X-API-Key", auto_error=False, description="An agentflow API key, instead of Bearer."
)

MAX_KEY_LENGTH = 200
"""Longer credentials are refused without a database lookup."""


async def current_principal(
    state: StateDep,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    header_key: Annotated[str | None, Depends(_api_key_header)],
) -> Principal:
    """The key the request acts as.

    Raises:
        UnauthorizedError: no key, an unknown or revoked key (401).
        StoreUnavailableError: the key database is down (503).
    """
    if state.settings.auth_disabled:
        return anonymous()
    presented = bearer.credentials if bearer is not None else header_key
    if not presented:
        raise UnauthorizedError("an API key is required: send 'Authorization: Bearer <key>'")
    if len(presented) > MAX_KEY_LENGTH:
        raise UnauthorizedError("invalid API key")
    principal = await asyncio.to_thread(state.keys.authenticate, presented)
    if principal is None:
        raise UnauthorizedError("invalid API key")
    return principal


def require_scope(scope: Scope) -> Callable[..., Awaitable[Principal]]:
    """A dependency that returns the calling key when it has ``scope`` (``admin`` has all).

    Raises (from the dependency):
        UnauthorizedError: no valid key (401).
        ForbiddenError: the key lacks ``scope`` (403).
    """

    async def dependency(
        principal: Annotated[Principal, Depends(current_principal)],
    ) -> Principal:
        if not principal.allows(scope):
            raise ForbiddenError(f"this API key lacks the '{scope.value}' scope")
        return principal

    return dependency


SubmitKey = Annotated[Principal, Depends(require_scope(Scope.SUBMIT))]
ReadKey = Annotated[Principal, Depends(require_scope(Scope.READ))]
ApproveKey = Annotated[Principal, Depends(require_scope(Scope.APPROVE))]
AdminKey = Annotated[Principal, Depends(require_scope(Scope.ADMIN))]
