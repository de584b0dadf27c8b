"""agentflow's benchmark suite: ``python -m benchmarks`` (see ``benchmarks/README.md``).

Each benchmark measures agentflow side by side with a baseline in the same run, on the same
machine, and writes ``benchmarks/results/<name>.json`` plus a markdown table.
"""
