"""The Redis store: its scripts, the decisions it persists, its reads, and the finish that claims the next jobs."""
