"""Judging: verdicts for finished runs, and tests that share one compile."""
