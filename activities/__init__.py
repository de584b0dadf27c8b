"""Activities: everything that touches the world (models, tools, Redis, the database)."""
