"""`python -m bridge` runs the `serial-bridge` command."""

from bridge.cli import main

raise SystemExit(main())
