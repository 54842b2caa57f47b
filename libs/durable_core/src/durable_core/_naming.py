"""Subjects, stream and bucket names, and validation of ids and keys (pure)."""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass

from durable_core.errors import InvalidInputError

_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
_WORKFLOW = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,127}")
_ROUTE = re.compile(r"[A-Za-z0-9_-]{1,64}")
MAX_PARTITION_KEY_BYTES = 1024
ANY_ROUTE = "any"
# A command's number with several shards is its stream sequence times this plus its shard
# (see Names.command_seq): the most shards an engine may have.
SHARD_SLOTS = 64


def check_invocation_id(invocation_id: str) -> str:
    """Return the id if it is usable as a subject token and KV key, else InvalidInputError."""
    if not isinstance(invocation_id, str) or not _ID.fullmatch(invocation_id):
        raise InvalidInputError(
            f"invalid invocation id {invocation_id!r:.80}: use 1-128 characters from "
            "A-Z a-z 0-9 _ -"
        )
    return invocation_id


def check_workflow_name(name: str) -> str:
    """Return the name if it is a valid workflow name, else InvalidInputError."""
    if not isinstance(name, str) or not _WORKFLOW.fullmatch(name):
        raise InvalidInputError(
            f"invalid workflow name {name!r:.80}: start with a letter or _, then letters, digits, "
            "_ . - (at most 128)"
        )
    return name


def encode_partition_key(key: str) -> str:
    """Encode any string as one subject token (URL-safe base64, no padding; '_' if empty)."""
    if not isinstance(key, str):
        raise InvalidInputError(f"partition key must be a string, not {type(key).__name__}")
    try:
        raw = key.encode("utf-8", errors="strict")
    except UnicodeEncodeError as e:
        raise InvalidInputError(
            f"partition key is not valid Unicode (lone surrogate {key[e.start]!r} at "
            f"position {e.start})"
        ) from e
    if len(raw) > MAX_PARTITION_KEY_BYTES:
        raise InvalidInputError(
            f"partition key is {len(raw)} bytes; the limit is {MAX_PARTITION_KEY_BYTES}"
        )
    if not raw:
        return "_"
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def check_partition_key(key: str) -> str:
    """A partition key a caller gave: a non-empty string of up to MAX_PARTITION_KEY_BYTES.

    An empty one was taken and then run as no key at all (a command's empty key means none):
    invocations submitted with it ran side by side, not one at a time."""
    if key == "":
        raise InvalidInputError(
            "partition key is empty: give one to run invocations one at a time per key, or "
            "none (None, or no --partition-key) to run this one on its own"
        )
    encode_partition_key(key)
    return key


def check_route(route: str) -> str:
    """The route token of a command: ``any`` for ``""``, else the route itself (a version
    token such as ``v-<16 hex>``) if it is one subject token; else InvalidInputError."""
    if route == "":
        return ANY_ROUTE
    if not isinstance(route, str) or not _ROUTE.fullmatch(route):
        raise InvalidInputError(
            f"invalid command route {route!r:.80}: one token of 1-64 characters from "
            "A-Z a-z 0-9 _ -"
        )
    return route


def payload_owner(object_name: str) -> str:
    """The invocation a stored large value belongs to: objects are named
    ``<invocation id>.<token>`` (``_transport.payloads``), so retention and the sweep find an
    invocation's objects by name."""
    return object_name.rsplit(".", 1)[0]


def decode_partition_key(token: str) -> str:
    """Inverse of encode_partition_key."""
    if token == "_":
        return ""
    padded = token + "=" * (-len(token) % 4)
    return base64.urlsafe_b64decode(padded.encode("ascii")).decode("utf-8")


def shard_of(invocation_id: str, shards: int) -> int:
    """The shard (0 to ``shards`` - 1) of an invocation: its id's SHA-256, first 8 bytes as
    an unsigned big-endian number, modulo ``shards`` (the same in every process and
    language; never Python's ``hash``, which differs between processes)."""
    if shards == 1:
        return 0
    digest = hashlib.sha256(invocation_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") % shards


@dataclass(frozen=True, slots=True)
class Names:
    """Every JetStream name the engine uses, derived from one prefix and the number of
    shards (of the commands, the journal and the state: one keeps the names of an engine made
    before shards).

    With several shards, an invocation's journal and state are in the shard its id hashes to,
    and a command in the shard its partition key (its invocation id if it has none) hashes
    to, so that a key's commands stay in one stream, in order. The command stream
    ``<PREFIX>_COMMANDS`` then holds only the schedules' firings (``sched.cron``, ``tick``)
    and the engine's metadata; shard ``k``'s commands and timers are in
    ``<PREFIX>_COMMANDS_<k>``.
    """

    prefix: str
    shards: int = 1

    @property
    def command_stream(self) -> str:
        """The engine's first stream: with one shard, every command, timer and schedule
        firing; with several, the schedule firings (and the number of shards, always)."""
        return f"{self.prefix.upper()}_COMMANDS"

    @property
    def command_streams(self) -> list[str]:
        """The streams that hold commands: ``<PREFIX>_COMMANDS``, or
        ``<PREFIX>_COMMANDS_<k>`` for each shard ``k`` when there are several."""
        return self._sharded(self.command_stream)

    def command_shard(self, routing_key: str) -> int:
        """The shard of the commands routed by ``routing_key`` (a partition key, or the
        invocation id of a command without one)."""
        return shard_of(routing_key, self.shards)

    def command_stream_of(self, routing_key: str) -> str:
        """The stream that holds the commands routed by ``routing_key``."""
        return self._shard(self.command_stream, routing_key)

    def command_seq(self, shard: int, stream_seq: int) -> int:
        """A command's number, unique in the engine: its stream sequence with one shard, else
        ``stream_seq * SHARD_SLOTS + shard`` (runs, leases and the journal's CLAIM entries
        name a command by it; a key's commands, in one shard, keep their order)."""
        return stream_seq if self.shards == 1 else stream_seq * SHARD_SLOTS + shard

    def stream_seq_of(self, command_seq: int) -> int:
        """The stream sequence of a command numbered ``command_seq`` (in its shard)."""
        return command_seq if self.shards == 1 else command_seq // SHARD_SLOTS

    def command_stream_subjects(self, shard: int | None) -> list[str]:
        """The subjects of the command stream (``shard`` None) or of command shard ``shard``."""
        if self.shards == 1:
            return [self.command_subjects, self.schedule_subjects, self.tick_subjects]
        if shard is None:
            return [f"{self.prefix}.sched.cron.>", self.tick_subjects]
        return [f"{self.prefix}.cmd.s{shard}.>", f"{self.prefix}.sched.s{shard}.>"]

    def _cmd(self, shard: int) -> str:
        """The subject head of a shard's commands (``<prefix>.cmd`` with one shard)."""
        return f"{self.prefix}.cmd" if self.shards == 1 else f"{self.prefix}.cmd.s{shard}"

    def _sharded(self, base: str) -> list[str]:
        """``base`` with one shard; ``<base>_<k>`` for each shard ``k`` with several."""
        return [base] if self.shards == 1 else [f"{base}_{k}" for k in range(self.shards)]

    def _shard(self, base: str, invocation_id: str) -> str:
        """The one of ``_sharded(base)`` that holds ``invocation_id``."""
        return base if self.shards == 1 else f"{base}_{shard_of(invocation_id, self.shards)}"

    @property
    def journal_stream(self) -> str:
        """The journal stream of an engine with one shard (see journal_streams)."""
        return f"{self.prefix.upper()}_JOURNAL"

    @property
    def journal_streams(self) -> list[str]:
        """Every journal stream: ``<PREFIX>_JOURNAL``, or ``<PREFIX>_JOURNAL_<k>`` for each
        shard ``k`` when there are several."""
        return self._sharded(self.journal_stream)

    def journal_stream_of(self, invocation_id: str) -> str:
        """The journal stream that holds ``invocation_id``'s journal."""
        return self._shard(self.journal_stream, invocation_id)

    @property
    def state_bucket(self) -> str:
        """The state bucket of an engine with one shard (see state_buckets)."""
        return f"{self.prefix}_state"

    @property
    def state_buckets(self) -> list[str]:
        """Every state bucket: ``<prefix>_state``, or ``<prefix>_state_<k>`` for each shard
        ``k`` when there are several."""
        return self._sharded(self.state_bucket)

    def state_bucket_of(self, invocation_id: str) -> str:
        """The state bucket that holds ``invocation_id``'s state (the journal's shard)."""
        return self._shard(self.state_bucket, invocation_id)

    @property
    def keys_bucket(self) -> str:
        """Who holds each partition key (per-key ordering)."""
        return f"{self.prefix}_keys"

    @property
    def processors_bucket(self) -> str:
        """Processor leases: who is alive and which commands each holds (the re-drive)."""
        return f"{self.prefix}_processors"

    @property
    def fleet_bucket(self) -> str:
        """The fleet registry: what each live processor serves (records expire with it)."""
        return f"{self.prefix}_fleet"

    @property
    def types_bucket(self) -> str:
        """Serialized protobuf descriptors by full message name (payloads readable anywhere)."""
        return f"{self.prefix}_types"

    @property
    def payloads_bucket(self) -> str:
        """The object store bucket of large values (claim check, issue 18)."""
        return f"{self.prefix}_payloads"

    @property
    def runs_bucket(self) -> str:
        """Which processor runs a command that was delivered more than once (see worker)."""
        return f"{self.prefix}_runs"

    @property
    def calls_bucket(self) -> str:
        """GRPC services' answers and fences by idempotency key (durable_core.idempotency)."""
        return f"{self.prefix}_calls"

    @property
    def command_subjects(self) -> str:
        """Every command subject (the stream's), of every workflow and route."""
        return f"{self.prefix}.cmd.>"

    def route_subjects(self, workflow: str, route: str, shard: int = 0) -> str:
        """The filter of the consumer of one workflow's commands on one route (in shard
        ``shard``)."""
        wf = encode_partition_key(workflow)
        return f"{self._cmd(shard)}.{wf}.{check_route(route)}.>"

    def key_subjects(self, partition_key: str) -> str:
        """Every command of a partition key, whatever its workflow and route."""
        shard = self.command_shard(partition_key)
        return f"{self._cmd(shard)}.*.*.{encode_partition_key(partition_key)}"

    def route_of(self, subject: str) -> tuple[str, str] | None:
        """``(workflow, route)`` of a routed command subject; None if it is not one."""
        head = f"{self.prefix}.cmd."
        if not subject.startswith(head):
            return None
        parts = subject[len(head) :].split(".")
        if self.shards > 1:
            if len(parts) != 4 or not parts[0].startswith("s"):
                return None
            parts = parts[1:]
        if len(parts) != 3:
            return None
        try:
            return decode_partition_key(parts[0]), parts[1]
        except (ValueError, UnicodeDecodeError):
            return None

    @property
    def legacy_command_subjects(self) -> str:
        """Commands of the layout before routing (``<prefix>.cmd.<key>``, one token)."""
        return f"{self.prefix}.cmd.*"

    def route_consumer(self, base: str, workflow: str, route: str) -> str:
        """The durable name of the consumer of ``workflow``'s commands on ``route``: consumer
        names cannot hold dots (workflow names may), so a hash names the pair."""
        digest = hashlib.sha256(f"{workflow}\0{check_route(route)}".encode()).hexdigest()
        return f"{base}-{digest[:16]}"

    @property
    def journal_subjects(self) -> str:
        """Every journal subject, of every shard."""
        return f"{self.prefix}.journal.>"

    def journal_shard_subjects(self, shard: int) -> str:
        """The subjects of journal stream ``shard`` (all of them with one shard)."""
        if self.shards == 1:
            return self.journal_subjects
        return f"{self.prefix}.journal.s{shard}.*"

    def command_subject(self, workflow: str, route: str, partition_key: str) -> str:
        """Where a command goes: ``<prefix>.cmd.<workflow>.<route>.<key>``, so that only a
        consumer of that workflow (on that route) ever takes it."""
        if not workflow:
            raise InvalidInputError("a command must name its workflow (it routes by it)")
        wf = encode_partition_key(check_workflow_name(workflow))
        key = encode_partition_key(partition_key)
        return f"{self._cmd(self.command_shard(partition_key))}.{wf}.{check_route(route)}.{key}"

    @property
    def schedule_subjects(self) -> str:
        return f"{self.prefix}.sched.>"

    def schedule_subject(self, key: str, routing_key: str = "") -> str:
        """Subject holding one server-side schedule (a timer or a delayed start) of a
        command routed by ``routing_key``: with several shards, in that command's shard (a
        schedule fires into its own stream)."""
        if self.shards == 1:
            return f"{self.prefix}.sched.{key}"
        return f"{self.prefix}.sched.s{self.command_shard(routing_key)}.{key}"

    def journal_subject(self, invocation_id: str) -> str:
        """``<prefix>.journal.<id>``, or ``<prefix>.journal.s<shard>.<id>`` with several
        shards (so each shard's stream takes only its own)."""
        if self.shards == 1:
            return f"{self.prefix}.journal.{invocation_id}"
        shard = shard_of(invocation_id, self.shards)
        return f"{self.prefix}.journal.s{shard}.{invocation_id}"

    def control_subject(self, invocation_id: str) -> str:
        """Core-NATS subject for immediate lifecycle requests (cancel) to a running invocation."""
        return f"{self.prefix}.ctl.{invocation_id}"

    @property
    def control_subjects(self) -> str:
        return f"{self.prefix}.ctl.>"

    def state_event_subject(self, invocation_id: str) -> str:
        """Core-NATS subject where the server republishes each state change."""
        return f"{self.prefix}.state.{invocation_id}"

    @property
    def state_event_subjects(self) -> str:
        return f"{self.prefix}.state.>"

    def notice_prefix(self, client: str) -> str:
        """Where one client's result notices go: ``<prefix>.notice.<client>``, each awaited
        invocation one more token under it (see ``is_notice_subject``)."""
        return f"{self.prefix}.notice.{client}"

    def is_notice_subject(self, subject: str) -> bool:
        """Whether ``subject`` is a client's notice subject (``<prefix>.notice.<client>.<n>``):
        a processor sends a result notice only there, never where a state says to."""
        head = f"{self.prefix}.notice."
        if not subject.startswith(head):
            return False
        tokens = subject[len(head) :].split(".")
        return len(tokens) == 2 and all(_ID.fullmatch(t) for t in tokens)

    # -- schedules -------------------------------------------------------------------------

    @property
    def schedules_bucket(self) -> str:
        """Schedule definitions by name (durable_core.schedules)."""
        return f"{self.prefix}_schedules"

    def cron_subject(self, name: str) -> str:
        """Subject of the server-side schedule that fires schedule ``name``.

        Four tokens, unlike the timers' ``<prefix>.sched.<id>.<suffix>``, so no invocation id
        can ever name the same subject.
        """
        return f"{self.prefix}.sched.cron.{name}.spec"

    @property
    def tick_subjects(self) -> str:
        return f"{self.prefix}.tick.>"

    def tick_subject(self, name: str) -> str:
        """Where the server publishes each firing of schedule ``name`` (the scheduler's input)."""
        return f"{self.prefix}.tick.{name}"
