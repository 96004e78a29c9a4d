"""The end-to-end fixtures (agent_config, start_agent, pushing_meter) are in tests/conftest.py,
shared with tests/faults and tests/perf."""
