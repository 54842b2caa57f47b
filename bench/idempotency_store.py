"""Benchmark of ``durable_core.idempotency``: what its records cost a keyed gRPC call.

    .venv/bin/python bench/idempotency_store.py [--calls 400] [--rounds 3]

On an embedded single node and on a 3-node R3 cluster (local ``nats-server`` processes), the
example service runs twice as a subprocess: plain, and with ``--idempotency-store``. This
process calls OrderService.Validate one call at a time, each with a new idempotency key (the
store creates a record, then writes the answer), then repeats the last key (answered from its
record). Rounds alternate plain and store; the medians of the rounds' p50s are printed.

Not a test: it prints numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from pathlib import Path
from tempfile import TemporaryDirectory

from durable_core import EngineConfig
from durable_core._transport import Transport
from durable_core.config import NatsConfig
from durable_core.testing import NatsCluster, NatsServer, ServiceProcess
from durable_examples.order.v1 import order_pb2, order_pb2_grpc


def p50_ms(samples: list[float]) -> float:
    """The median of ``samples`` (seconds), in ms."""
    return statistics.median(samples) * 1000


def calls(stub: order_pb2_grpc.OrderServiceStub, n: int) -> tuple[float, float]:
    """p50 of ``n`` calls with new keys, and of ``n // 4`` repeats of one key (ms)."""
    req = order_pb2.ValidateRequest(order_id="b-1", amount_cents=5)
    md: tuple[tuple[str, str], ...] = ()
    for _ in range(20):  # warm the channel (and, with the store, bind its bucket)
        md = (("idempotency-key", f"warm-{uuid.uuid4().hex}:1"), ("durable-fence", "1"))
        stub.Validate(req, metadata=md, timeout=10)
    new = []
    for _ in range(n):
        md = (("idempotency-key", f"{uuid.uuid4().hex}:1"), ("durable-fence", "1"))
        t0 = time.perf_counter()
        stub.Validate(req, metadata=md, timeout=10)
        new.append(time.perf_counter() - t0)
    again = []
    for _ in range(n // 4):
        t0 = time.perf_counter()
        stub.Validate(req, metadata=md, timeout=10)
        again.append(time.perf_counter() - t0)
    return p50_ms(new), p50_ms(again)


def measure(url: str, replicas: int, n: int, rounds: int, log_dir: Path) -> dict[str, float]:
    """The medians over ``rounds`` of each kind's p50 on the NATS at ``url`` (ms)."""
    prefix = "bi" + uuid.uuid4().hex[:6]

    async def make_engine() -> None:  # as the first processor would
        engine = EngineConfig(prefix=prefix, replicas=replicas)
        t = await Transport.connect(NatsConfig.from_url(url), engine, create=True)
        await t.close()

    asyncio.run(make_engine())
    results: dict[str, list[float]] = {"plain": [], "store": [], "store, repeat": []}
    for _ in range(rounds):
        for label in ("plain", "store"):
            env = {"HEALTH_PORT": "0"}
            if label == "store":
                env |= {"IDEMPOTENCY_STORE_URL": url, "DURABLE_PREFIX": prefix}
            service = ServiceProcess(log_dir, env)
            try:
                service.wait_ready()
                new, again = calls(order_pb2_grpc.OrderServiceStub(service.channel), n)
            finally:
                service.stop()
            results[label].append(new)
            if label == "store":
                results["store, repeat"].append(again)
    return {k: statistics.median(v) for k, v in results.items()}


def main() -> None:
    """Measure on one node and on R3; print a Markdown table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=400)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    rows = []
    with TemporaryDirectory() as tmp:
        log_dir = Path(tmp)
        with NatsServer() as one:
            rows.append(("1 node", measure(one.url, 1, args.calls, args.rounds, log_dir)))
        cluster = NatsCluster.create(prefer_docker=False)
        cluster.start()
        try:
            rows.append(("R3", measure(cluster.url, 3, args.calls, args.rounds, log_dir)))
        finally:
            cluster.stop()
    print("| setup | plain call p50 | with the store, new key | added | repeat (stored answer) |")
    print("|---|---|---|---|---|")
    for name, r in rows:
        print(
            f"| {name} | {r['plain']:.2f} ms | {r['store']:.2f} ms | "
            f"+{r['store'] - r['plain']:.2f} ms | {r['store, repeat']:.2f} ms |"
        )


if __name__ == "__main__":
    main()
