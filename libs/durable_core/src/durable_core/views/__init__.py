"""What an operator sees of one invocation, computed once from its state and journal.

The CLI (``durable status``, ``--json``) and the inspector (its API and pages) both render
:class:`InvocationView`, so they always agree. :func:`describe` is pure (no NATS, no asyncio):
it reads the journal the way the replay machine does and adds what a person needs:

* the arguments, the output or failure, and the lineage (parent, children, fork, rerun);
* each step with its kind; a sleep's duration and wake time; an awakeable's id and its payload
  or rejection; a signal's name and payload; a child's id and result; ``waiting`` while a wait
  has not completed;
* every failed attempt of a step (``ATTEMPT_FAILED``: its error and when the next one is due)
  and every failure of the whole invocation that ``retry`` sent round again;
* the status history with the journal's own timestamps (not when somebody happened to look);
* the lifecycle actions that are legal now.
"""

from durable_core.views._build import describe, payload_json
from durable_core.views._format import format_duration, format_time, from_ms, iso
from durable_core.views._model import (
    ACTIONS,
    Attempt,
    AttemptDict,
    BodyRetry,
    FailureDict,
    InvocationDict,
    InvocationView,
    RetryDict,
    StepDict,
    StepState,
    StepView,
    Transition,
    TransitionDict,
    legal_actions,
)

__all__ = [
    "ACTIONS",
    "Attempt",
    "AttemptDict",
    "BodyRetry",
    "FailureDict",
    "InvocationDict",
    "InvocationView",
    "RetryDict",
    "StepDict",
    "StepState",
    "StepView",
    "Transition",
    "TransitionDict",
    "describe",
    "format_duration",
    "format_time",
    "from_ms",
    "iso",
    "legal_actions",
    "payload_json",
]
