"""``Annotated`` dependency aliases for the routes."""

from __future__ import annotations

from typing import Annotated, cast

from fastapi import Depends, Request
from temporalio.client import Client

from api.state import AppState


def get_state(request: Request) -> AppState:
    """The app's shared resources (set in the lifespan)."""
    return cast(AppState, request.app.state.agentflow)


async def get_temporal(request: Request) -> Client:
    """A connected Temporal client; 503 when Temporal is unreachable."""
    return await get_state(request).temporal.client()


StateDep = Annotated[AppState, Depends(get_state)]
TemporalDep = Annotated[Client, Depends(get_temporal)]
