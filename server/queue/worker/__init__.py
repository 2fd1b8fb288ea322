"""The worker: claims jobs from a store, runs each in a task of its own; leases, stops, deadlines, waiters."""
