"""Whether a job must wait for a human, as one pure rule the workflow and ``prepare_job`` share.

The workflow's approval gate (:mod:`workflows.approval_gate`) decides with it whether a job waits;
``prepare_job`` decides with it whether it may run a job's quick in-memory tools itself (only a
job that will not wait: a gated call must never run before its decision). Both call this one
function on the same inputs, so they cannot disagree.

A change to this rule changes what recorded jobs would command on replay (whether
``prepare_job`` may have run the tools is in their history, whether the job waits is decided
again): make it under a new workflow shape (README, "Changing workflow code").
"""

from __future__ import annotations

from core.models import ApprovalPolicy, PlannedToolCall, SelectModelResult


def approval_reasons(
    require_approval: bool,
    policy: ApprovalPolicy,
    planned: list[PlannedToolCall],
    selection: SelectModelResult,
) -> tuple[list[str], list[str]]:
    """Why the job must wait, and which calls need a decision.

    The rules (README, "Approvals"): the request asked (``require_approval``); a planned call's
    tool requires approval (its metadata, or the policy's ``tools``); the selection's estimated
    cost (USD) is above the policy's ``cost_threshold_usd``.

    Returns:
        ``(reasons, gated_call_ids)``: one line per reason (empty: the job does not wait) and
        the ids of the calls whose tool requires approval.
    """
    gated = [p for p in planned if p.requires_approval or p.call.name in policy.tools]
    reasons: list[str] = []
    if require_approval:
        reasons.append("the request asked for approval")
    reasons += [f"tool {p.call.name} (call {p.call.id}) requires approval" for p in gated]
    threshold = policy.cost_threshold_usd
    estimate = selection.estimated_cost_usd
    if threshold is not None and estimate is not None and estimate > threshold:
        reasons.append(
            f"estimated cost {estimate:.4f} USD is above the approval threshold of "
            f"{threshold:g} USD"
        )
    return reasons, [p.call.id for p in gated]
