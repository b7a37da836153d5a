"""The hardware boundary: console transports (UART, telnet, virtual) and control lines (GPIO, QMP).

Nothing outside this package imports termios, pyserial or gpiozero. The rest of the daemon talks to
the Protocols in `bridge.hw.interfaces`; `bridge.hw.factory` picks the implementation for a config.
"""
