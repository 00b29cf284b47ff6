"""``python -m refind``: the ``refind`` command line."""

from refind.app.cli import main

raise SystemExit(main())
