"""Infrastructure: the job store, payload storage, caches, model providers, tools, Temporal."""
