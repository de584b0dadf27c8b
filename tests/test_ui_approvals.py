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
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from temporalio.testing import WorkflowEnvironment

from api.app import create_app
from core.auth import Scope
from core.settings import Settings
from infra.db import make_engine
from infra.keys import KeyStore
from infra.migrations import create_tables
from infra.quotas import Quotas
from infra.tools.sql_query import ensure_example_database
from tests.helpers import serve_asgi
from tests.workflow_support import agent_worker

if TYPE_CHECKING:
    from playwright.async_api import Browser, ConsoleMessage, Locator, Page, Route

pytestmark = pytest.mark.devserver

TERMINAL = {"COMPLETED", "FAILED", "CANCELED", "REJECTED", "EXPIRED"}
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
QUERY = "Check the order totals and count the products for the weekly review"
"""No arithmetic, SQL or Python term: the rules planner adds no call of its own."""
SQL = "SELECT count(*) AS products FROM products"


def missing(message: str) -> None:
    """Skip locally, fail under CI: the browser test must run in CI."""
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def chromium_path() -> str:
    found = shutil.which("chromium")
    if found is None:
        missing(
            "Debian's chromium is not installed (no `chromium` on PATH): run `make browser` "
            "(apt-get install chromium, as root)"
        )
    assert found is not None
    return found


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """A headless chromium (the system's), closed after the test."""
    executable = chromium_path()
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        missing("Playwright for Python is not installed: pip install -e '.[dev]'")
    async with async_playwright() as p:
        launched = await p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            await launched.close()


@dataclass
class Stack:
    url: str
    key: str
    """A key with the submit, read and approve scopes (what a reviewer's key has)."""


@pytest.fixture(scope="module")
async def stack(
    dev_env: WorkflowEnvironment, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stack]:
    """The API (keys on) and a worker on one task queue of the session's dev server."""
    tmp_path = tmp_path_factory.mktemp("ui")
    settings = Settings(
        temporal_address=dev_env.client.service_client.config.target_host,
        redis_url=redis_url,
        database_url=f"sqlite:///{tmp_path / 'jobs.db'}",
        task_queue=f"ui-{uuid.uuid4()}",
        sql_database_path=ensure_example_database(tmp_path / "shop.sqlite"),
        api_key_pepper="ui-test-pepper",
        approval_tools=["calculator"],  # the policy gates calculator calls
    )
    engine = make_engine(settings.database_url)
    create_tables(engine)
    keys = KeyStore(engine, pepper="ui-test-pepper")
    reviewer = keys.create("reviewer", [Scope.SUBMIT, Scope.READ, Scope.APPROVE])
    quotas = Quotas.from_settings(settings)
    try:
        async with agent_worker(
            dev_env.client,
            redis_url=redis_url,
            database_url=settings.database_url,
            settings=settings,
            task_queue=settings.task_queue,
            quotas=quotas,
        ):
            with serve_asgi(create_app(settings)) as url:
                yield Stack(url=url, key=reviewer.secret)
    finally:
        await quotas.aclose()
        engine.dispose()


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
    browser: Browser, stack: Stack, tmp_path: Path
) -> None:
    from playwright.async_api import expect

    expect.set_options(timeout=20_000)
    auth = {"Authorization": f"Bearer {stack.key}"}
    async with httpx.AsyncClient(base_url=stack.url, headers=auth, timeout=30) as http:
        job_id = await submit(http, f"{QUERY} [{uuid.uuid4().hex[:8]}]")

        page = await browser.new_page(viewport={"width": 1100, "height": 900})
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
        await page.get_by_label("API key").fill(stack.key)
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


async def open_page(browser: Browser, stack: Stack) -> Page:
    page = await browser.new_page()
    await page.goto(f"{stack.url}/ui/approvals")
    await page.get_by_label("API key").fill(stack.key)
    await page.get_by_role("button", name="Use key").click()
    return page


async def test_reject_job_ends_it_rejected(browser: Browser, stack: Stack) -> None:
    """ "Reject job" ends the job REJECTED; markup in the job's text shows as text."""
    from playwright.async_api import expect

    expect.set_options(timeout=20_000)
    auth = {"Authorization": f"Bearer {stack.key}"}
    markup = '<b id="injected">bold</b><img src=x onerror="window.injected=1">'
    async with httpx.AsyncClient(base_url=stack.url, headers=auth, timeout=30) as http:
        job_id = await submit(http, f"{QUERY} {markup} [{uuid.uuid4().hex[:8]}]")
        page = await open_page(browser, stack)
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


async def test_a_late_decision_shows_the_apis_409_inline(browser: Browser, stack: Stack) -> None:
    """Another reviewer decided while this page was stale: the API's ``detail`` shows inline.

    The page is made stale on purpose: its event stream and then its re-lists are refused (as
    by a flaky network), so nothing tells it the job was decided until it submits.
    """
    from playwright.async_api import expect

    expect.set_options(timeout=20_000)
    auth = {"Authorization": f"Bearer {stack.key}"}
    async with httpx.AsyncClient(base_url=stack.url, headers=auth, timeout=30) as http:
        job_id = await submit(http, f"{QUERY} [{uuid.uuid4().hex[:8]}]")
        page = await browser.new_page()
        await page.route(re.compile(r"/v1/jobs/[^/?]+/events"), refuse)
        await page.goto(f"{stack.url}/ui/approvals")
        await page.get_by_label("API key").fill(stack.key)
        await page.get_by_role("button", name="Use key").click()
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
