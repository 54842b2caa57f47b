"""The engine: what runs invocations, and the rules by which work enters them.

Public here: ``Worker`` (runs invocations from the command stream) and ``LeaseRecord`` (what
a processor's lease says, for whoever watches leases). The parts are private modules:
``_worker`` (the fetch loop), ``_lease`` and ``_hold`` (what a processor holds, and why runs
are exclusive), ``_execution`` (one delivery of one invocation), ``_attempt`` (one run of the
workflow's code), ``_writer`` (the run's journal: append, catch-up, claim), ``_keys`` (per-key
ordering), ``_intake`` (accepting invocations, appending from outside), ``_signals``, ``_env``.
"""

from durable_core.engine._lease import LeaseRecord
from durable_core.engine._worker import Worker

__all__ = ["LeaseRecord", "Worker"]
