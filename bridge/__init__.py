"""serial-bridge: a secure remote serial console appliance.

UARTs, control lines and a console log, served over an authenticated TLS websocket.
"""

__version__ = "0.1.0"
