"""The approvals page in a real browser: Debian's ``chromium`` driven by Playwright for Python.

Everything is real: a Temporal dev server, a worker, Redis, SQLite, the API under uvicorn with
API keys on, and the page's own JavaScript calling the REST endpoints with the key a reviewer
types in. A job waits for approval with two tool calls; the page shows it, a click rejects one
call and approves the other, and the job completes having run exactly the approved call.

Playwright cannot download its own browser here, so it launches the system's ``chromium``
(``apt-get install chromium``). Without it the test is skipped locally and fails under ``CI``.
The screenshot taken before submitting lands in the test's ``tmp_path``, and also in
``$AGENTFLOW_SCREENSHOT_DIR`` when that is set.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from core.auth import Scope
from tests.stack import Stack, StackSpec

if TYPE_CHECKING:
    from playwright.async_api import ConsoleMessage, Locator, Page, Route

pytestmark = [pytest.mark.devserver, pytest.mark.browser]

TERMINAL = {"COMPLETED", "FAILED", "CANCELED", "REJECTED", "EXPIRED"}
QUERY = "Check the order totals and count the products for the weekly review"
"""No arithmetic, SQL or Python term: the rules planner adds no call of its own."""
SQL = "SELECT count(*) AS products FROM products"


@pytest.fixture(scope="module")
def stack_spec() -> StackSpec:
    """Keys on; the policy gates calculator calls; budgets are settled as the worker does."""
    return StackSpec(
        settings={"api_key_pepper": "ui-test-pepper", "approval_tools": ["calculator"]},
        quotas=True,
    )


@pytest.fixture(scope="module")
def reviewer(stack: Stack) -> str:
    """A key with the submit, read and approve scopes (what a reviewer's key has)."""
    return stack.key("reviewer", Scope.SUBMIT, Scope.READ, Scope.APPROVE).secret


async def wait_status(
    http: httpx.AsyncClient, job_id: str, wanted: set[str], timeout_s: float = 30
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        r = await http.get(f"/v1/jobs/{job_id}")
        assert r.status_code == 200, r.text
        job: dict[str, Any] = r.json()
        if job["status"] in wanted:
            return job
        assert time.monotonic() < deadline, f"job {job_id} stuck at {job['status']}"
        await asyncio.sleep(0.1)


async def submit(http: httpx.AsyncClient, query: str) -> str:
    r = await http.post(
        "/v1/jobs",
        json={
            "query": query,
            "model_tier": "medium",  # above small: the small tier drafts while the job waits
            "require_approval": True,
            "tool_calls": [
                {"id": "calc", "name": "calculator", "parameters": {"expression": "19 * 23"}},
                {"id": "sql", "name": "sql_query", "parameters": {"sql": SQL}},
            ],
        },
    )
    assert r.status_code == 202, r.text
    job_id: str = r.json()["job_id"]
    await wait_status(http, job_id, {"AWAITING_APPROVAL"})
    return job_id


def job_card(page_root: Locator, job_id: str) -> Locator:
    return page_root.get_by_role("region", name=f"Job {job_id}", exact=True)


async def test_a_reviewer_rejects_one_call_and_approves_the_other(
    page: Page, stack: Stack, reviewer: str, tmp_path: Path
) -> None:
    from playwright.async_api import expect

    expect.set_options(timeout=20_000)
    async with stack.http(reviewer) as http:
        job_id = await submit(http, f"{QUERY} [{uuid.uuid4().hex[:8]}]")

        await page.set_viewport_size({"width": 1100, "height": 900})
        problems: list[str] = []
        page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))

        def console(msg: ConsoleMessage) -> None:
            # The browser logs every 4xx it gets; the deliberate 422 below is one.
            if msg.type == "error" and not msg.text.startswith("Failed to load resource"):
                problems.append(f"console: {msg.text}")

        page.on("console", console)
        await page.goto(f"{stack.url}/ui/approvals")

        # Keys are on: the page asks for one before it lists anything.
        await expect(page.get_by_role("status").first).to_contain_text("Enter an API key")
        await page.get_by_label("API key").fill(reviewer)
        await page.get_by_role("button", name="Use key").click()

        card = job_card(page, job_id)
        await expect(card).to_be_visible()
        await expect(card).to_contain_text(QUERY)
        await expect(card).to_contain_text("medium")  # the tier
        await expect(card).to_contain_text("USD")  # the estimated cost
        await expect(card.locator(".reasons li").first).to_be_visible()
        calc = card.get_by_role("group", name=re.compile(r"^Call calc: calculator"))
        sql = card.get_by_role("group", name=re.compile(r"^Call sql: sql_query"))
        calc_params = calc.get_by_label("Parameters of calc (JSON)")
        sql_params = sql.get_by_label("Parameters of sql (JSON)")
        assert json.loads(await calc_params.input_value()) == {"expression": "19 * 23"}
        assert json.loads(await sql_params.input_value()) == {"sql": SQL}
        await expect(calc).to_contain_text("needs approval")
        await expect(sql).not_to_contain_text("needs approval")
        await expect(card.locator(".reasons")).to_contain_text("tool calculator (call calc)")
        await expect(calc.get_by_role("radio", name="Approve")).to_be_checked()
        await expect(sql.get_by_role("radio", name="Approve")).to_be_checked()
        # The card reads the job's event stream (fetch() with the key, parsed by the page).
        await expect(card.locator(".live")).to_have_text("● live")
        # The small tier's draft (from the job's progress or its initial_response event).
        draft = card.get_by_role("region", name=f"Draft of job {job_id}")
        await expect(draft).to_contain_text("[simulated small model")

        # Parameters that are not JSON are refused in the page; nothing is sent.
        await sql_params.fill('{"sql": ')
        await card.get_by_role("button", name="Submit decision").click()
        await expect(sql).to_contain_text("Not valid JSON")
        await expect(card.get_by_role("alert")).to_contain_text("Fix the parameters")
        assert (await http.get(f"/v1/jobs/{job_id}")).json()["status"] == "AWAITING_APPROVAL"
        # Parameters the tool does not take: the API's 422 detail shows inline.
        await sql_params.fill(json.dumps({"statement": SQL}))
        await expect(sql).to_contain_text("Edited: the call runs with these parameters")
        await card.get_by_role("button", name="Submit decision").click()
        await expect(card.get_by_role("alert")).to_contain_text("422: calls[1]")
        await expect(card.get_by_role("button", name="Submit decision")).to_be_enabled()
        assert (await http.get(f"/v1/jobs/{job_id}")).json()["status"] == "AWAITING_APPROVAL"
        # The same parameters, written differently, count as approved unchanged.
        await sql_params.fill(json.dumps({"sql": SQL}))
        await expect(sql.locator(".edited")).to_be_empty()

        await calc.get_by_role("radio", name="Reject").check()
        await card.get_by_label("Comment").fill("the calculator is not needed here")

        shot = tmp_path / "approvals.png"
        await page.screenshot(path=str(shot), full_page=True)
        copy_to = os.environ.get("AGENTFLOW_SCREENSHOT_DIR")
        if copy_to:
            shutil.copy(shot, Path(copy_to) / "approvals.png")

        await card.get_by_role("button", name="Submit decision").click()
        await expect(card.locator(".state")).to_contain_text("Approved by reviewer")

        job = await wait_status(http, job_id, TERMINAL)
        # The page sees the end too (from the event stream, or by polling without one).
        await expect(card.locator(".state")).to_contain_text("Finished: COMPLETED")
        # The run call's result comes from its tool_result event; the rejected call's outcome
        # from the approval record.
        await expect(sql).to_contain_text("ran: success")
        await expect(calc).to_contain_text("rejected: not run")
        finished = tmp_path / "approvals-finished.png"
        await page.screenshot(path=str(finished), full_page=True)
        if copy_to:
            shutil.copy(finished, Path(copy_to) / "approvals-finished.png")
        assert not problems, problems

    assert job["status"] == "COMPLETED", job
    result = job["result"]
    by_id = {r["call_id"]: r for r in result["tool_results"]}
    assert set(by_id) == {"calc", "sql"}
    assert by_id["sql"]["status"] == "success", by_id["sql"]
    assert by_id["calc"]["status"] == "error"
    assert by_id["calc"]["error_type"] == "ToolCallRejected"
    record = result["approval_record"]
    assert record["outcome"] == "approved"
    assert record["comment"] == "the calculator is not needed here"
    assert record["reviewer"].startswith("reviewer")
    outcomes = {c["call_id"]: c["outcome"] for c in record["calls"]}
    assert outcomes == {"calc": "rejected", "sql": "approved"}


async def refuse(route: Route) -> None:
    """A Playwright route handler: the request fails as on a dropped connection."""
    await route.abort()


async def open_page(page: Page, stack: Stack, key: str) -> Page:
    await page.goto(f"{stack.url}/ui/approvals")
    await page.get_by_label("API key").fill(key)
    await page.get_by_role("button", name="Use key").click()
    return page


async def test_reject_job_ends_it_rejected(page: Page, stack: Stack, reviewer: str) -> None:
    """ "Reject job" ends the job REJECTED; markup in the job's text shows as text."""
    from playwright.async_api import expect

    expect.set_options(timeout=20_000)
    markup = '<b id="injected">bold</b><img src=x onerror="window.injected=1">'
    async with stack.http(reviewer) as http:
        job_id = await submit(http, f"{QUERY} {markup} [{uuid.uuid4().hex[:8]}]")
        await open_page(page, stack, reviewer)
        card = job_card(page, job_id)
        await expect(card.locator(".query")).to_contain_text(markup)
        assert await page.locator("#injected").count() == 0
        assert await page.evaluate("window.injected === undefined")
        await card.get_by_label("Comment").fill("not this week")
        await card.get_by_role("button", name="Reject job").click()
        await expect(card.locator(".state")).to_contain_text("Finished: REJECTED")
        await expect(card.get_by_role("button", name="Submit decision")).to_be_disabled()
        job = await wait_status(http, job_id, TERMINAL)
    assert job["status"] == "REJECTED", job
    assert job["result"]["tool_results"] == []
    assert job["result"]["approval_record"]["outcome"] == "rejected"
    assert job["result"]["approval_record"]["comment"] == "not this week"


async def test_a_late_decision_shows_the_apis_409_inline(
    page: Page, stack: Stack, reviewer: str
) -> None:
    """Another reviewer decided while this page was stale: the API's ``detail`` shows inline.

    The page is made stale on purpose: its event stream and then its re-lists are refused (as
    by a flaky network), so nothing tells it the job was decided until it submits.
    """
    from playwright.async_api import expect

    expect.set_options(timeout=20_000)
    async with stack.http(reviewer) as http:
        job_id = await submit(http, f"{QUERY} [{uuid.uuid4().hex[:8]}]")
        await page.route(re.compile(r"/v1/jobs/[^/?]+/events"), refuse)
        await open_page(page, stack, reviewer)
        card = job_card(page, job_id)
        await expect(card.get_by_role("button", name="Submit decision")).to_be_enabled()
        await page.route(re.compile(r"/v1/jobs\?status="), refuse)
        await asyncio.sleep(0.5)  # a re-list already on its way comes back before the decision

        decided = await http.post(f"/v1/jobs/{job_id}/approval", json={"approved": False})
        assert decided.status_code == 200, decided.text
        await wait_status(http, job_id, {"REJECTED"})  # the page's click will find it ended
        again = await http.post(f"/v1/jobs/{job_id}/approval", json={"approved": True})
        assert again.status_code == 409, again.text
        detail = again.json()["detail"]

        await card.get_by_role("button", name="Submit decision").click()
        await expect(card.get_by_role("alert")).to_contain_text(f"409: {detail}")
