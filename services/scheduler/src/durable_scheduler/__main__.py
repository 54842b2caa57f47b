"""``python -m durable_scheduler``."""

from durable_scheduler.main import main

raise SystemExit(main())
