"""Analytics over the job records: latency, tokens, cost, cache hit rates, tier mix, and advice.

The figures come from what jobs recorded (the ``jobs`` table and each job's
:class:`core.models.AgentResult`), never from estimates. The seed's ``PerformanceMonitor``
becomes :func:`infra.analytics.advice.summarize` (with its suggestion rules) and its
``CostOptimizer`` becomes :func:`infra.analytics.strategies.analyze_costs`;
:func:`infra.analytics.timeseries.time_series` feeds the dashboard and
:func:`infra.analytics.stats.cache_period_stats` the cache statistics endpoint.

One module per job:

- :mod:`~infra.analytics.models`: the period and the response models (what the API returns).
- :mod:`~infra.analytics.samples`: one job as analytics reads it (:class:`JobSample`).
- :mod:`~infra.analytics.window`: loading a period's jobs from the database (bounded: the
  :data:`~infra.analytics.window.MAX_JOBS` that ended last; it blocks, run it off the event
  loop).
- :mod:`~infra.analytics.stats`: figures shared by the reports (distributions, tier mix, cost
  per tier, cache statistics per level).
- :mod:`~infra.analytics.advice`: the performance summary and its suggestion rules.
- :mod:`~infra.analytics.strategies`: the cost analysis and its cost-saving strategies.
- :mod:`~infra.analytics.timeseries`: the dashboard's time buckets.
- :mod:`~infra.analytics.runner`: computing reports in a separate process, shared and cached.
- :mod:`~infra.analytics.limiter`: each key's calls per minute.
- :mod:`~infra.analytics.service`: the runner and the limiter as the API uses them.

Everything but loading and serving is a pure function of the loaded samples, so tests check it
against hand-computed values.

Definitions used throughout:

- A job counts when it is terminal and ended (``completed_at``) inside the window
  ``[now - period, now]``; running jobs and jobs waiting for approval do not count yet.
- Response time (ms): the job's ``duration_ms`` (start to end) minus the time it waited at the
  approval gate (its ``awaiting_approval`` stage timing): the system's latency, not a reviewer's.
- Percentiles: linear interpolation between the closest ranks (numpy's default, Hyndman and
  Fan's type 7; :func:`core.stats.percentile`).
- Tokens: prompt plus completion tokens over the job's model calls; cost (USD): the sum of its
  calls' costs, for every terminal status (failed and cancelled jobs paid too).
- Cache: hits and misses per level from each job's :class:`core.models.CacheReport`. Jobs
  recorded before cache reports count one response-level lookup (``response_cache_hit``) and one
  tool-level lookup per successful tool result (its ``cache_hit``).
- Monthly figures extrapolate the period linearly to 30 days: ``x 30 / period days`` (x 720 for
  an hour, x 30 for a day, x 30 / 7 for a week; a sampled window uses the span its jobs cover).
"""
