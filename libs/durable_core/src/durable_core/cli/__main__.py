from durable_core.cli import main

raise SystemExit(main())
