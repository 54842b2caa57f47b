from durable_processor.main import main

raise SystemExit(main())
