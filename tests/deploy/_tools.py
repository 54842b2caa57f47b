"""Where the deployment checks find the repository and the real tools they run.

Every tool comes from a PyPI package that `make setup` installs (versions in constraints.txt); a
check whose tool is missing skips and says which package brings it.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SERVICES = ("processor", "hello_service", "scheduler", "inspector")


def tool(name: str, package: str) -> str:
    """The path of executable ``name`` from the project's environment, else PATH; skip if absent."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.is_file() else shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed: `pip install {package}` (make setup installs it)")
    return found


def written(service_dir: str) -> bool:
    """A service folder holds a package yet (the scheduler arrives in a later issue)."""
    return (REPO / "services" / service_dir / "pyproject.toml").is_file()
