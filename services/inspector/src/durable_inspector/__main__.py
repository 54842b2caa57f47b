"""``python -m durable_inspector``."""

from durable_inspector.main import main

raise SystemExit(main())
