"""Activities: thin wrappers that turn contracts into calls on the infrastructure and the tools.

Three groups, each a class whose constructor takes its clients so the worker wires them once:
:class:`~activities.stages.StageActivities` (the short stages, run as local activities),
:class:`~activities.generation.ModelActivities` and :class:`~activities.tool_calls.ToolActivities`
(regular activities that heartbeat). :class:`AgentActivities` holds one of each; the worker's
wiring (:func:`worker.build_activities`) builds them from the settings.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from activities.batches import BatchActivities
from activities.generation import ModelActivities
from activities.stages import StageActivities
from activities.token_stream import TokenStreamSettings
from activities.tool_calls import ToolActivities


@dataclass(frozen=True)
class AgentActivities:
    """Every activity of ``AgentWorkflow``, wired to one worker's clients."""

    stages: StageActivities
    model: ModelActivities
    tools: ToolActivities
    batches: BatchActivities

    def all(self) -> list[Callable[..., Any]]:
        """The bound activity methods, for ``Worker(activities=...)``."""
        s = self.stages
        return [
            s.prepare_job,
            s.compress_context,
            s.record_job,
            self.model.generate_answer,
            self.tools.run_tools,
            self.batches.batch_step,
        ]


__all__ = [
    "AgentActivities",
    "BatchActivities",
    "ModelActivities",
    "StageActivities",
    "TokenStreamSettings",
    "ToolActivities",
]
