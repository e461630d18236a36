"""`python -m dfagent` is the same as the `dfagent` command."""

from dfagent.cli import main

raise SystemExit(main())
