"""What a key may see of a job: its own jobs (every job for an ``admin`` key), nothing else."""

from __future__ import annotations

from api.errors import JobNotFoundError
from api.job_views import read_job
from api.schemas import JobPublic
from api.state import AppState
from core.auth import Principal


async def read_own_job(state: AppState, principal: Principal, job_id: str) -> JobPublic:
    """The job, when the calling key may see it.

    Raises:
        JobNotFoundError: unknown job, or another key's (404, revealing nothing).
    """
    job = await read_job(state, job_id)
    if not principal.owns(job.owner):
        raise JobNotFoundError(f"job {job_id} not found")
    return job
