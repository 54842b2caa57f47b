"""Typed inputs are converted and checked all the way down: ``list[Item]`` inside a dataclass
was handed over as plain dicts (``order.items[0].sku`` failed in the workflow), and a
``list[int]`` of strings was accepted at intake and failed the workflow later. The pure
replayer hands a typed workflow the same value the engine does."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from durable_core import Context
from durable_core._codec import convert
from durable_core.errors import InvalidInputError
from durable_core.testing import replay_workflow


@dataclass
class Item:
    sku: str
    qty: int


@dataclass
class Order:
    id: str
    items: list[Item]
    tags: dict[str, int] | None = None


async def total(ctx: Context, order: Order) -> int:
    assert all(isinstance(i, Item) for i in order.items), order.items
    return sum(i.qty for i in order.items)


async def summed(ctx: Context, xs: list[int]) -> int:
    return sum(xs)


def test_nested_containers_are_converted_and_checked() -> None:
    order = convert({"id": "o", "items": [{"sku": "a", "qty": 2}], "tags": {"x": 1}}, Order)
    assert order == Order("o", [Item("a", 2)], {"x": 1})
    assert convert([[1, "a"]], list[tuple[int, str]]) == [(1, "a")]
    assert convert(["a", "b"], set[str]) == {"a", "b"}
    for bad, hint, where in [
        ({"id": "o", "items": [{"bogus": 1}]}, Order, "item 0: Item has no field"),
        (["a"], list[int], "item 0: expected int"),
        ({"x": "y"}, dict[str, int], "item 'x': expected int"),
        ([1], tuple[int, int], "expected 2 items"),
        ({"id": "o", "items": {"sku": "a"}}, Order, "expected an array"),
    ]:
        with pytest.raises(InvalidInputError, match=where):
            convert(bad, hint)


async def test_a_nested_typed_input_reaches_the_workflow_as_its_types(
    local_engine: Callable[..., Any],
) -> None:
    async with local_engine(total, summed) as (client, _):
        raw = {"id": "o1", "items": [{"sku": "a", "qty": 2}, {"sku": "b", "qty": 3}]}
        assert (await client.invoke(total, raw, timeout=20)).output == 5
        built = Order("o2", [Item("x", 1)])
        assert (await client.invoke(total, built, timeout=20)).output == 1
        with pytest.raises(InvalidInputError, match="item 1: expected int"):
            await client.invoke(summed, [1, "b"], timeout=20)  # refused before it is sent
        with pytest.raises(InvalidInputError, match="Item has no field"):
            await client.invoke(total, {"id": "o", "items": [{"bogus": 1}]}, timeout=20)


async def test_the_replayer_hands_a_typed_workflow_its_types() -> None:
    run = await replay_workflow(total, {"id": "o", "items": [{"sku": "a", "qty": 4}]})
    assert run.output == 4
    with pytest.raises(TypeError, match="does not fit total"):
        await replay_workflow(total, {"id": "o", "nope": 1})


async def items_back(ctx: Context, xs: list[Item]) -> list[Item]:
    assert all(isinstance(x, Item) for x in xs)
    return xs


async def tags_back(ctx: Context, tags: set[str]) -> set[str]:
    assert isinstance(tags, set)
    return tags


async def test_a_container_of_typed_items_goes_in_and_comes_back(
    local_engine: Callable[..., Any],
) -> None:
    """Converted item by item, the input held Items the client could not encode, and the
    workflow could not return."""
    async with local_engine(items_back, tags_back) as (client, _):
        out = await client.invoke(items_back, [{"sku": "a", "qty": 1}], timeout=20)
        assert out.output == [Item("a", 1)]
        assert (await client.invoke(items_back, [Item("b", 2)], timeout=20)).output == [
            Item("b", 2)
        ]
        assert (await client.invoke(tags_back, ["y", "x"], timeout=20)).output == {"x", "y"}
