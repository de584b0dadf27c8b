"""The peer of benchmark 7: a one-tool-then-answer agent on pydantic-ai's Temporal integration.

It is built the way pydantic-ai's current API asks for (not the deprecated ``TemporalAgent``): a
regular :class:`pydantic_ai.Agent` with a :class:`TemporalDurability` capability, listed on a
workflow class through ``__pydantic_ai_agents__`` so that ``PydanticAIPlugin`` (on the client and
therefore the worker) registers its model-request and tool activities. The model is a
:class:`FunctionModel` standing in for an LLM at zero latency, just as agentflow's simulated
provider does in the bench stack: its first call asks for the ``calculator`` tool with the
expression taken from the prompt, its second call (after the tool's return) answers in text.

The tool evaluates through :func:`infra.tools.calculator.evaluate_expression`, the very
function agentflow's ``calculator`` tool calls, so both frameworks do the same tool work.

Both the worker (``benchmarks.peer_worker``) and the driver (``benchmarks.bench_peer``) import this
module. Temporal's sandbox re-imports it for every workflow run and so rebuilds the agent each
time: that is pydantic-ai's documented pattern (module-level agent next to its workflow), and its
cost is part of what is measured.
"""

from __future__ import annotations

import re

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from pydantic_ai import Agent
    from pydantic_ai.durable_exec.temporal import TemporalDurability
    from pydantic_ai.messages import (
        ModelMessage,
        ModelRequest,
        ModelResponse,
        TextPart,
        ToolCallPart,
        ToolReturnPart,
        UserPromptPart,
    )
    from pydantic_ai.models.function import AgentInfo, FunctionModel

    from infra.tools.calculator import evaluate_expression

AGENT_NAME = "peer_calculator"
"""The agent's name; pydantic-ai uses it in its activity names."""

WORKFLOW_NAME = "PeerAgentWorkflow"
"""The workflow type the driver starts."""

_EXPRESSION = re.compile(r"What is (?P<expr>[^?]+)\?")


def prompt_for(expression: str, nonce: str) -> str:
    """The prompt of one job: the question agentflow's benchmark job asks, with its nonce.

    Args:
        expression: arithmetic the model will hand to the ``calculator`` tool.
        nonce: makes the prompt unique (agentflow's caches key on the query; this keeps the
            two jobs' texts alike).
    """
    return f"What is {expression}? (nonce {nonce})"


def _prompt_text(messages: list[ModelMessage]) -> str:
    for message in messages:
        if isinstance(message, ModelRequest):
            for part in message.parts:
                if isinstance(part, UserPromptPart) and isinstance(part.content, str):
                    return part.content
    raise ValueError("no text user prompt in the conversation")


async def one_tool_then_answer(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    """The stand-in model: call ``calculator`` once, then answer with its result.

    Args:
        messages: the conversation so far.
        info: the agent's tools and settings (unused beyond what the conversation shows).

    Returns:
        A ``calculator`` tool call while no tool result is in the conversation, else the answer.
    """
    returns = [
        part
        for message in messages
        if isinstance(message, ModelRequest)
        for part in message.parts
        if isinstance(part, ToolReturnPart) and part.tool_name == "calculator"
    ]
    if returns:
        return ModelResponse(parts=[TextPart(f"The answer is {returns[-1].content}.")])
    match = _EXPRESSION.search(_prompt_text(messages))
    if match is None:
        raise ValueError("the prompt does not ask 'What is <expression>?'")
    return ModelResponse(
        parts=[
            ToolCallPart(
                tool_name="calculator",
                args={"expression": match.group("expr").strip()},
                tool_call_id="c1",
            )
        ]
    )


async def calculator(expression: str) -> int | float:
    """Evaluate an arithmetic expression exactly (agentflow's calculator evaluation).

    Args:
        expression: numbers, ``+ - * / // % **``, parentheses and math functions.
    """
    return evaluate_expression(expression)


agent: Agent[None, str] = Agent(
    FunctionModel(one_tool_then_answer, model_name="one-tool-then-answer"),
    name=AGENT_NAME,
    tools=[calculator],
    capabilities=[TemporalDurability()],
)
"""The peer agent: zero-latency function model, one tool, durable through Temporal activities."""


@workflow.defn(name=WORKFLOW_NAME)
class PeerAgentWorkflow:
    """Runs the peer agent on one prompt; every model request and tool call is an activity."""

    __pydantic_ai_agents__ = [agent]

    @workflow.run
    async def run(self, prompt: str) -> str:
        """Run the agent on ``prompt``.

        Returns:
            The agent's text answer.
        """
        result = await agent.run(prompt)
        return result.output
