"""The token side channel: a job's ``token`` events in a Redis stream, outside its history.

Token deltas are ephemeral: a reader that misses them still gets the whole answer in
``final_response``. Publishing them on the job's workflow stream cost one signal, and about four
history events, per flush, so a long answer multiplied the job's history. They go to one Redis
stream per job instead, :func:`token_stream_key`, written by the generation activity with
``XADD`` (capped at :data:`MAX_TOKEN_ENTRIES` entries, expiring :data:`TOKEN_STREAM_TTL_S` after
the last write) and read by the API's event hub (:mod:`api.event_hub`) with ``XREAD``.

Degradation: with Redis down (or the process's circuit breaker open,
:class:`infra.redis_client.RedisBreaker`) publishing is skipped, and a failure opens the breaker
for every Redis user of the process; readers see the job's durable events and
``final_response`` only.
"""

from __future__ import annotations

from typing import Final

from infra.cache import RedisCache
from infra.redis_client import REDIS_ERRORS

TOKEN_STREAM_PREFIX: Final = "agentflow:tokens:"
"""Key prefix of the per-job token streams."""

TOKEN_STREAM_TTL_S: Final = 3600
"""A token stream expires this many seconds after its last entry (the answer is durable in
``final_response``; the stream only serves readers that are live while the job runs)."""

MAX_TOKEN_ENTRIES: Final = 20_000
"""Most entries one job's token stream keeps (``XADD MAXLEN ~``): about 640 k tokens at the
default batch of 32; older entries are trimmed first."""

TOKEN_FIELD: Final = "e"
"""The stream entry field holding the ``TokenDelta`` JSON."""


def token_stream_key(job_id: str) -> str:
    """The Redis stream key of job ``job_id``'s token events."""
    return f"{TOKEN_STREAM_PREFIX}{job_id}"


async def publish_tokens(cache: RedisCache, job_id: str, events_json: list[str]) -> bool:
    """Append ``events_json`` (``TokenDelta`` JSON, in order) to the job's token stream.

    One pipeline: an ``XADD`` per event and one ``EXPIRE``, on the cache's client (the process's
    shared pool). Skipped while the process's breaker is open.

    Returns:
        ``True`` when written; ``False`` when Redis failed or the breaker was open (never
        raises for those: the answer stands without its token events).
    """
    if not events_json:
        return True
    if cache.breaker_open:
        return False
    key = token_stream_key(job_id)
    try:
        async with cache.client.pipeline(transaction=False) as pipe:
            for data in events_json:
                pipe.xadd(key, {TOKEN_FIELD: data}, maxlen=MAX_TOKEN_ENTRIES, approximate=True)
            pipe.expire(key, TOKEN_STREAM_TTL_S)
            await pipe.execute()
    except REDIS_ERRORS as exc:
        cache.record_failure("token publish", exc)
        return False
    return True
