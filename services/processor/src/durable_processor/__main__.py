"""``python -m durable_processor``."""

from durable_processor.main import main

raise SystemExit(main())
