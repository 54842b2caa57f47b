"""Which branch of a workflow each task is: named when the task is created.

A workflow may run tasks side by side (``asyncio.gather``, ``create_task``, a ``TaskGroup``);
each is a *branch* (``durable_core._journal.steps.Branch``), and a replay matches each step to
its entry by its branch and its place there. A branch is named by the order its parent
created it: a parent's code runs in order, so that is the same on every run, whatever the
branches' steps did meanwhile (a replayed step takes no time, an executed one does). The event
loop's task factory names each task as it is created, from the branch its creator carries
(``BRANCH``, a context variable every task takes a copy of). Tasks the engine starts for
itself inside a workflow (journal writes) are started with ``engine_task``, and tasks a step's
own code starts run only when the step executes: neither takes a branch.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from durable_core._journal import Branch

__all__ = ["BRANCH", "Named", "engine_task", "install"]


class Named(Protocol):
    """A run that keeps which branch each of its tasks is."""

    def name_task(self, task: asyncio.Future[Any], branch: Branch) -> None: ...


# (the run, the creator's branch, whether the creator is a step's own code)
BRANCH: contextvars.ContextVar[tuple[Named, Branch, bool] | None] = contextvars.ContextVar(
    "durable_branch", default=None
)


def engine_task(coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
    """A task the engine starts for itself, wherever it is: never one of a workflow's
    branches (it runs in the run that executes, not on replay)."""
    context = contextvars.copy_context()
    context.run(BRANCH.set, None)
    return asyncio.get_running_loop().create_task(coro, context=context)


def install(loop: asyncio.AbstractEventLoop) -> None:
    """Name the branch of each task created on ``loop`` (once per loop; any task factory
    already there still makes the task)."""
    before = loop.get_task_factory()
    if getattr(before, "_durable_branches", False):
        return

    def factory(
        loop: asyncio.AbstractEventLoop,
        coro: Any,
        context: contextvars.Context | None = None,
        **kwargs: Any,
    ) -> asyncio.Future[Any]:
        carried = BRANCH.get() if context is None else context.get(BRANCH)  # the creator's
        if carried is None or carried[2] or _NAMING.on:
            return _make(before, loop, coro, context, kwargs)
        run, parent, _ = carried
        branch = parent.child()
        # The task's own context (a caller's may serve several tasks: never changed).
        context = contextvars.copy_context() if context is None else context.copy()
        context.run(BRANCH.set, (run, branch, False))
        _NAMING.on = True  # a factory set over this one that calls it again: named once
        try:
            task = _make(before, loop, coro, context, kwargs)
        finally:
            _NAMING.on = False
        run.name_task(task, branch)
        return task

    factory._durable_branches = True  # type: ignore[attr-defined]
    loop.set_task_factory(factory)


class _Naming(threading.local):
    on = False


_NAMING = _Naming()


def _make(
    before: Any,
    loop: asyncio.AbstractEventLoop,
    coro: Any,
    context: contextvars.Context | None,
    kwargs: dict[str, Any],
) -> asyncio.Future[Any]:
    if before is not None:
        if context is None:
            return before(loop, coro, **kwargs)  # type: ignore[no-any-return]
        return before(loop, coro, context=context, **kwargs)  # type: ignore[no-any-return]
    return asyncio.Task(coro, loop=loop, context=context, **kwargs)
