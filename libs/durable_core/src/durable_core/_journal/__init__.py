"""The journal's pure machines: no asyncio, nats or grpc (an import-linter contract says so).

- ``kinds``: which entry kinds a run writes, which come from outside, which end an invocation;
- ``replay``: ``ReplayMachine``, what the journal holds, and replay-or-execute for each step;
- ``forks``: which entries a fork copied from its source, and what a copied awakeable asks;
- ``code``: which code (plugin package, version, fingerprint) wrote the journal;
- ``steps``: ``StepMachine``, every decision a workflow's context makes over the journal
  (replay, execute, cancel, park, retry at or give up, timers, waits, deterministic values).

The engine drives them over JetStream; the client and the test replayer use them too.
"""

from durable_core._journal.code import code_of, pin_for, stamp, started_on
from durable_core._journal.forks import (
    awakeable_asked,
    copied_by_fork,
    copied_step_of,
    copy_source,
    outcome_writer,
    step_writer,
)
from durable_core._journal.kinds import (
    EXTERNAL_KINDS,
    FINAL_KINDS,
    LIFECYCLE_KINDS,
    PROCESSOR_KINDS,
    STEP_KINDS,
    describe,
    kind_name,
)
from durable_core._journal.replay import Decision, Execute, Ident, Replay, ReplayMachine
from durable_core._journal.steps import (
    CANCELLED,
    LOCAL_TIMER,
    MAX_SLEEP,
    Branch,
    DeliverCancel,
    Due,
    GiveUp,
    Park,
    Patch,
    RetryAt,
    SleepFor,
    StepMachine,
    Submission,
    Wait,
)

__all__ = [
    "CANCELLED",
    "Branch",
    "EXTERNAL_KINDS",
    "FINAL_KINDS",
    "LIFECYCLE_KINDS",
    "LOCAL_TIMER",
    "MAX_SLEEP",
    "PROCESSOR_KINDS",
    "STEP_KINDS",
    "Decision",
    "DeliverCancel",
    "Due",
    "Execute",
    "GiveUp",
    "Ident",
    "Park",
    "Patch",
    "Replay",
    "ReplayMachine",
    "RetryAt",
    "SleepFor",
    "StepMachine",
    "Submission",
    "Wait",
    "awakeable_asked",
    "code_of",
    "copied_by_fork",
    "copied_step_of",
    "copy_source",
    "describe",
    "kind_name",
    "outcome_writer",
    "pin_for",
    "stamp",
    "started_on",
    "step_writer",
]
