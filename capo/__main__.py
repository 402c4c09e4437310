"""``python -m capo`` is the ``capo`` command."""

from capo.cli import main

raise SystemExit(main())
