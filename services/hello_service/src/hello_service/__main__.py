"""Entry point for ``python -m hello_service``."""

import sys

from hello_service.server import main

if __name__ == "__main__":
    sys.exit(main())
