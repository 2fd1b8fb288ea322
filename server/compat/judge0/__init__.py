"""Judge0 CE (`/judge0`): submissions, statuses, the catalog and the information routes."""
