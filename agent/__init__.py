"""tibber-agent: an eBZ DD3 meter's IR head, published to Tibber as a Pulse bridge would."""

__version__ = "0.1.0"
