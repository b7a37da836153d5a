"""The RFC 2217 front door: a port's console as a telnet COM-PORT endpoint for pyserial's
`rfc2217://`, labgrid's NetworkSerialPort and `microcom -t` (telnet framing, the COM-PORT option,
one session per client, the per-port listeners). It never imports another front door."""
