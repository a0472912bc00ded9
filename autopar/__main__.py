"""``python -m autopar``: the same command line as the ``autopar`` console script."""

from autopar.cli import main

raise SystemExit(main())
