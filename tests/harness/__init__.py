"""Reusable test harness: real brokers, real ptys, real sockets; no mocks of MQTT or serial."""
