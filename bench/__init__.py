"""The cost benchmark: the agent as a black box against a real TLS broker and a pty meter
(`python -m bench`, README "Cost"). Shares its probes with tests/perf, so the project has one
way of measuring cost."""
