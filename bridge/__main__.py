"""`python -m bridge` runs the `serial-bridge` command."""

from bridge.service.cli import main

raise SystemExit(main())
