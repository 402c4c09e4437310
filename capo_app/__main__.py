"""``python -m capo_app`` is the ``capo`` command (``accelerate launch -m capo_app train ...``)."""

from capo_app.cli import main

raise SystemExit(main())
