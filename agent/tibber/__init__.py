"""The Tibber side: topics and payloads as the Pulse bridge sends them, and the MQTT uplink."""
