"""The appliance itself: the daemon that composes the parts, and the command line around it.

- `daemon`: the composition root: builds ports, access and front doors from the config;
  reload, shutdown.
- `cli`: the `serial-bridge` command and its dispatch; `admin`: users and tokens; `demo`: the demo.
- `tls`: the server certificate; `sdnotify`: systemd readiness and watchdog.
- `selftest`: loopback checks of real adapters and lines; `udev`: udev rule generation.
"""
