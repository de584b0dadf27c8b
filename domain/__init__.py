"""Domain logic of an agent job, importable without Temporal, Redis or a model client.

Each module does one thing over the contracts in :mod:`core`: :mod:`domain.selection` (query
features and the heuristic tier scores), :mod:`domain.learned_router` and :mod:`domain.routing`
(who picks the tier), :mod:`domain.llm_router` (the small tier classifying a prompt, through
any :class:`core.providers.ModelProvider`), :mod:`domain.planner` and
:mod:`domain.model_planner` (which tool calls a request needs) and :mod:`domain.compression`
(fitting context to a token budget by importance). Activities wrap them; tests call them
directly, without servers.
"""
