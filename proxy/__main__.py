"""`python -m proxy` is the same as the `shardwire` command."""

from proxy.cli import main

raise SystemExit(main())
