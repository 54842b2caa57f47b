"""The engine: what runs invocations, and the rules by which work enters them.

Public here: ``Worker`` (runs invocations from the command stream) and ``LeaseRecord`` (what
a processor's lease says, for whoever watches leases). The parts are private modules:
``_worker`` (the fetch loop; ``Worker.connect``), ``_lease`` and ``_hold`` (what a processor
holds, and why runs are exclusive), ``_execution`` (one delivery of one invocation),
``_attempt`` (one run of the workflow's code), ``_context`` (``RunContext``, the I/O the step
machine of ``durable_core._journal`` asks for) and ``_step_io`` (where it journals, how a
failure reads), ``_writer`` (the run's journal: append, catch-up, claim), ``_keys`` (per-key
ordering), ``_intake`` (accepting invocations; ``deliver_external``, the one way in from
outside), ``_signals``, ``_env``.
"""

from durable_core.engine._lease import LeaseRecord
from durable_core.engine._worker import Worker

__all__ = ["LeaseRecord", "Worker"]
