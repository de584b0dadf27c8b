"""Shared kernel of agentflow: settings, durable models, errors, model catalog, tool registry.

Everything here crosses a boundary (API <-> workflow <-> activities) and therefore does no I/O at
import time. Workflow code may import :mod:`core.models`, :mod:`core.errors` and
:mod:`core.catalog`.
"""
