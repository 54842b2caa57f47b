"""The client: submit invocations, wait for their results, read and steer them.

``Client`` is the one entry point (``durable_core`` exports it and the result types). The
parts are private modules: ``_client`` (the ``Client`` class: connect, invoke, wait, read),
``_results`` (status, result, step and summary types, built from a state and its journal),
``_submit`` (intake checks, the trace an invocation starts), ``_lifecycle`` (pause, resume,
cancel, retry, rerun, fork, signals and awakeables, all through the engine's
``deliver_external``).
"""

from durable_core.client._client import Client
from durable_core.client._results import (
    ExecutionSummary,
    Failure,
    InvocationResult,
    Status,
    StepRecord,
)

__all__ = ["Client", "ExecutionSummary", "Failure", "InvocationResult", "Status", "StepRecord"]
