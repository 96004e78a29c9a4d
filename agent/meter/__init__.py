"""The meter side: parity, framing, parsing and validation of eBZ D0 telegrams."""
