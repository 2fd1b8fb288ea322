"""Access: who is calling, their keys, sessions, lockout, rate limits and quotas, and what they may do to a job."""
