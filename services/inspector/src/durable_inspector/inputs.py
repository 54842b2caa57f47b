"""What the API reads from requests: listing queries, times, and JSON bodies.

Every malformed input is an ``ApiError`` 400 ``invalid_input`` that names the offending
parameter or field.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request

from durable_core import Status
from durable_inspector.errors import ApiError
from durable_inspector.index import MAX_LIMIT, SORT_KEYS, Query, SortKey

__all__ = ["json_body", "optional_str", "parse_query", "parse_time", "required_str"]

_STATUSES = ", ".join(s.value for s in Status)

_SPACED_OFFSET = re.compile(r"(T[0-9:.]+) ([0-9]{2}:?[0-9]{2})$")


def parse_time(name: str, text: str) -> datetime:
    """An ISO 8601 time (no zone = UTC) or milliseconds since the epoch."""
    # An unencoded "+01:00" in a URL arrives as " 01:00": read it as the offset it was.
    text = _SPACED_OFFSET.sub(r"\1+\2", text.strip())
    try:
        if text.lstrip("-").isdigit():
            return datetime.fromtimestamp(int(text) / 1000, tz=UTC)
        value = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except (ValueError, OverflowError, OSError) as e:
        raise ApiError(
            400,
            "invalid_input",
            f"{name}={text!r} is not a time: use ISO 8601 (2026-11-28T16:00:00Z) "
            "or milliseconds since the epoch",
        ) from e
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def parse_query(params: Any) -> Query:
    """A listing query from URL parameters; empty values mean "not given" (as HTML forms send).

    Raises:
        ApiError: 400 with the offending parameter named.
    """

    def get(name: str) -> str | None:
        value = params.get(name)
        return value.strip() if value is not None and value.strip() else None

    statuses = None
    if (raw := get("status")) is not None:
        chosen = set()
        for part in raw.split(","):
            try:
                chosen.add(Status(part.strip().lower()))
            except ValueError as e:
                raise ApiError(
                    400, "invalid_input", f"unknown status {part.strip()!r}; one of {_STATUSES}"
                ) from e
        statuses = frozenset(chosen)
    sort = get("sort") or "created_at"
    if sort not in SORT_KEYS:
        raise ApiError(400, "invalid_input", f"sort={sort!r}: sort by {' or '.join(SORT_KEYS)}")
    order = (get("order") or "desc").lower()
    if order not in ("asc", "desc"):
        raise ApiError(400, "invalid_input", f"order={order!r}: use asc or desc")
    limit_text = get("limit") or "50"
    try:
        limit = int(limit_text)
    except ValueError:
        limit = 0
    if not 1 <= limit <= MAX_LIMIT:
        raise ApiError(
            400, "invalid_input", f"limit={limit_text!r}: a whole number from 1 to {MAX_LIMIT}"
        )
    after = get("created_after")
    before = get("created_before")
    created_after = parse_time("created_after", after) if after else None
    created_before = parse_time("created_before", before) if before else None
    if created_after and created_before and created_after >= created_before:
        raise ApiError(400, "invalid_input", "created_after must be earlier than created_before")
    sort_key: SortKey = "created_at" if sort == "created_at" else "updated_at"
    return Query(
        statuses=statuses,
        workflow=get("workflow"),
        partition_key=params.get("partition_key") or None,
        created_after=created_after,
        created_before=created_before,
        sort=sort_key,
        order="asc" if order == "asc" else "desc",
        limit=limit,
        cursor=get("cursor"),
    )


async def json_body(request: Request, *, required: bool = True) -> dict[str, Any]:
    """The request's JSON object; ``{}`` for an empty body when not ``required``."""
    raw = await request.body()
    if not raw.strip():
        if required:
            raise ApiError(400, "invalid_input", "the request needs a JSON object body")
        return {}
    try:
        value = json.loads(raw)
    except RecursionError as e:
        raise ApiError(400, "invalid_input", "the request body is nested too deeply") from e
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, integers of too many digits
        detail = str(e) if len(str(e)) <= 200 else str(e)[:200] + "..."
        raise ApiError(400, "invalid_input", f"the request body is not valid JSON: {detail}") from e
    if not isinstance(value, dict):
        raise ApiError(
            400,
            "invalid_input",
            f"the request body must be a JSON object, not {type(value).__name__}",
        )
    return value


def optional_str(body: dict[str, Any], key: str) -> str | None:
    """A body field that is a non-empty string when given; None when absent."""
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ApiError(400, "invalid_input", f"{key!r} must be a non-empty string")
    return value


def required_str(body: dict[str, Any], key: str) -> str:
    """A body field that must be a non-empty string."""
    value = optional_str(body, key)
    if value is None:
        raise ApiError(400, "invalid_input", f"{key!r} is required")
    return value
