"""serial-bridge: a secure remote serial console appliance (UARTs, control lines, console log, TLS websocket)."""

__version__ = "0.1.0"
