"""durable_core: durable execution for Python workflows on NATS JetStream.

Write a workflow as ``async def wf(ctx: Context, input) -> output``; every step it takes
through ``ctx`` (``ctx.call`` for gRPC, ``ctx.run`` for local side effects) is journaled in
JetStream, so the workflow survives crashes and resumes without redoing finished steps.
"""

from durable_core._grpc import MethodRef, ServiceRef, grpc_service
from durable_core._naming import check_invocation_id
from durable_core._payloads import Blob
from durable_core.client import (
    Client,
    ExecutionSummary,
    Failure,
    InvocationResult,
    Status,
    StepRecord,
)
from durable_core.config import EngineConfig, NatsConfig, WorkerConfig
from durable_core.context import Awakeable, Context
from durable_core.engine import Worker
from durable_core.errors import (
    AlreadyResolvedError,
    AwakeableRejectedError,
    ChildWorkflowError,
    ConfigError,
    ConflictError,
    DurableError,
    EngineNotFoundError,
    ExecutionTimeoutError,
    ExpiredError,
    IllegalTransitionError,
    InvalidInputError,
    InvocationCancelledError,
    InvocationFinishedError,
    InvocationTimeoutError,
    NatsUnavailableError,
    NonDeterminismError,
    NotFoundError,
    PayloadTooLargeError,
    PayloadUnavailableError,
    RetryableError,
    StepFailedError,
    StepTimeoutError,
    SuspendExecution,
    TerminalError,
    UnknownWorkflowError,
    UnsupportedServerError,
    WorkflowFailedError,
)
from durable_core.interceptors import Interceptor, StepInput, WorkflowInput
from durable_core.plugins import (
    PLUGIN_GROUP,
    PluginSet,
    WorkflowRegistry,
    hookimpl,
    hookspec,
    load_plugins,
)
from durable_core.retry import RetryPolicy

__version__ = "0.1.0"

__all__ = [
    "AlreadyResolvedError",
    "Awakeable",
    "AwakeableRejectedError",
    "Blob",
    "ChildWorkflowError",
    "Client",
    "ConfigError",
    "ConflictError",
    "Context",
    "DurableError",
    "EngineConfig",
    "EngineNotFoundError",
    "ExecutionSummary",
    "ExecutionTimeoutError",
    "ExpiredError",
    "Failure",
    "IllegalTransitionError",
    "Interceptor",
    "InvalidInputError",
    "InvocationCancelledError",
    "InvocationFinishedError",
    "InvocationResult",
    "InvocationTimeoutError",
    "MethodRef",
    "NatsConfig",
    "NatsUnavailableError",
    "NonDeterminismError",
    "NotFoundError",
    "PayloadTooLargeError",
    "PayloadUnavailableError",
    "PLUGIN_GROUP",
    "PluginSet",
    "RetryPolicy",
    "RetryableError",
    "ServiceRef",
    "Status",
    "StepFailedError",
    "StepInput",
    "StepRecord",
    "StepTimeoutError",
    "SuspendExecution",
    "TerminalError",
    "UnknownWorkflowError",
    "UnsupportedServerError",
    "Worker",
    "WorkerConfig",
    "WorkflowFailedError",
    "WorkflowInput",
    "WorkflowRegistry",
    "check_invocation_id",
    "grpc_service",
    "hookimpl",
    "hookspec",
    "load_plugins",
]
