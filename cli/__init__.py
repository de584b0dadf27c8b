"""The ``agentflow`` command line: dev stack, example runs."""
