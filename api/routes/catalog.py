"""``/v1/tools`` and ``/v1/models``: what jobs can use."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from api.deps import StateDep, require_scope
from api.openapi import error_responses
from core.auth import Scope
from core.catalog import ModelSpec
from core.models import ToolSpecPublic

router = APIRouter(
    prefix="/v1", tags=["catalog"], dependencies=[Depends(require_scope(Scope.READ))]
)
"""Both routes need a key with the ``read`` scope."""


@router.get("/tools", responses=error_responses(401, 403, 503))
async def list_tools(state: StateDep) -> list[ToolSpecPublic]:
    """The registered tools with their parameter schemas and metadata."""
    return [tool.public() for tool in state.tools]


@router.get("/models", responses=error_responses(401, 403, 503))
async def list_models(state: StateDep) -> list[ModelSpec]:
    """The model catalog: one model per tier with its provider, cost (USD/1k tokens) and speed."""
    return [
        m.model_copy(update={"api_key": "***" if m.api_key else None}) for m in state.catalog.models
    ]
