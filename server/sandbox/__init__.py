"""The sandbox: runs one job's code in bubblewrap under cgroups, rlimits and seccomp, and keeps a warm pool."""
