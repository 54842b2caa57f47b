from durable_scheduler.main import main

raise SystemExit(main())
