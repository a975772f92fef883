"""`python -m maskvlp ...`: the same as the `maskvlp` command (for machines where the entry point is not
installed, e.g. the source tree on PYTHONPATH)."""

from maskvlp.cli import main

raise SystemExit(main())
