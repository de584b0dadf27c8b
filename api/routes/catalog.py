"""``/v1/tools`` and ``/v1/models``: what jobs can use."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import StateDep
from core.catalog import ModelSpec
from core.models import ToolSpecPublic

router = APIRouter(prefix="/v1", tags=["catalog"])


@router.get("/tools")
async def list_tools(state: StateDep) -> list[ToolSpecPublic]:
    """The registered tools with their parameter schemas and metadata."""
    return [tool.public() for tool in state.tools]


@router.get("/models")
async def list_models(state: StateDep) -> list[ModelSpec]:
    """The model catalog: one model per tier with its provider, cost (USD/1k tokens) and speed."""
    return [
        m.model_copy(update={"api_key": "***" if m.api_key else None}) for m in state.catalog.models
    ]
