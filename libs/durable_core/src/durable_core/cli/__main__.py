"""``python -m durable_core.cli``: the ``durable`` command."""

from durable_core.cli import main

raise SystemExit(main())
