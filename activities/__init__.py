"""Temporal activities and (for now) the domain logic they run.

Importing the package loads nothing: the worker's wiring, which builds every activity class
with its clients, is :mod:`activities.wiring` (``AgentActivities``), so a module that needs one
pure function (the CLI's router commands, say) does not load the model client, Redis or the
tokenizer.
"""
