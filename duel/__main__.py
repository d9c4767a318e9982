"""``python -m duel``: see :mod:`duel.cli`."""

from duel.cli import main

raise SystemExit(main())
