"""The messages of an invocation's path with no engine: the design's own floor (part "bare").

``python bench/_bench/bare.py URLS SERVICE TAG REPLICAS INFLIGHT`` is a processor reduced to the
messages and calls a hello or a 3-step invocation puts on its sequential path, in the engine's
order, with nats-py and grpc.aio and nothing else: no replay, no step machine, no interceptors,
no protobuf journal entries. The bench process plays the client (``measure.bare_path``):

1. the client's start command, a JetStream publish (deduplicated by its message id) to a
   work-queue stream, delivered over a pull request kept open;
2. the claim: a KV create of the state (history 1, republished, reads from the leader: the
   engine's state bucket);
3. per step, one gRPC call to the example service, then its fenced append to the journal
   stream (``Nats-Expected-Last-Subject-Sequence``); the last step and the COMPLETED entry as
   one atomic batch on a replicated journal, one after the other on one node (as the engine
   writes them);
4. the result notice, a core NATS message to the client's subject;
5. the final state write and the command's ack, off the path.

Up to INFLIGHT invocations run at once, each as its own task, one pull request open at a time
(as the engine's processor runs them), so the same part measures throughput and the CPU per
invocation of this processor and its client.

Whatever the engine's sequential p50 costs beyond this one's is the engine's own code; what
this one costs beyond the floor (one publish+ack) is the design's hops on this machine.
"""

from __future__ import annotations

import asyncio
import sys

import grpc
import nats
import nats.errors
from nats.js.api import ConsumerConfig, KeyValueConfig, RePublish, StorageType

from durable_examples.hello.v1.hello_pb2 import HelloRequest
from durable_examples.hello.v1.hello_pb2_grpc import HelloServiceStub
from durable_examples.order.v1.order_pb2 import ChargeRequest, ShipRequest, ValidateRequest
from durable_examples.order.v1.order_pb2_grpc import OrderServiceStub


def names(tag: str) -> dict[str, str]:
    """Streams, subjects and the bucket of one bare run (the bench makes the streams)."""
    return {
        "commands": f"BARE_CMD_{tag}",
        "command_subject": f"bare{tag}.cmd",
        "journal": f"BARE_JOURNAL_{tag}",
        "journal_subjects": f"bare{tag}.journal.>",
        "bucket": f"bare_state_{tag}",
        "state_subjects": f"bare{tag}.state.>",
    }


def state_bucket(tag: str, replicas: int) -> KeyValueConfig:
    n = names(tag)
    return KeyValueConfig(
        bucket=n["bucket"],
        history=1,
        replicas=replicas,
        storage=StorageType.FILE,
        republish=RePublish(src=f"$KV.{n['bucket']}.>", dest=n["state_subjects"]),
        direct=False,
    )


async def serve(urls: str, service: str, tag: str, replicas: int, inflight: int) -> None:
    n = names(tag)
    nc = await nats.connect(servers=urls.split(","), name=f"bare-{tag}")
    js = nc.jetstream()
    kv = await js.key_value(n["bucket"])
    channel = grpc.aio.insecure_channel(service)
    hello, orders = HelloServiceStub(channel), OrderServiceStub(channel)
    await hello.SayHello(HelloRequest(name="warm"))
    sub = await js.pull_subscribe(
        n["command_subject"],
        durable="bare",
        stream=n["commands"],
        config=ConsumerConfig(ack_wait=30),
    )
    running: set[asyncio.Task[None]] = set()
    slots = asyncio.Semaphore(inflight)
    batches = iter(range(10**9))

    async def run(msg: nats.aio.msg.Msg) -> None:
        try:
            headers = msg.headers or {}
            iid, kind = headers["Bare-Id"], headers["Bare-Kind"]
            await kv.create(iid, b"running")  # the claim
            if kind == "hello":
                calls = [lambda: hello.SayHello(HelloRequest(name=iid))]
            else:
                key = (("idempotency-key", iid),)
                calls = [
                    lambda: orders.Validate(
                        ValidateRequest(order_id=iid, amount_cents=1250), metadata=key
                    ),
                    lambda: orders.Charge(
                        ChargeRequest(order_id=iid, amount_cents=1250), metadata=key
                    ),
                    lambda: orders.Ship(ShipRequest(order_id=iid), metadata=key),
                ]
            subject = f"bare{tag}.journal.{iid}"
            last = 0
            for i, call in enumerate(calls, 1):
                out = (await call()).SerializeToString()
                fence = {
                    "Nats-Msg-Id": f"{iid}:{i}",
                    "Nats-Expected-Last-Subject-Sequence": str(last),
                }
                if i < len(calls) or replicas == 1:
                    last = (await js.publish(subject, out, headers=fence)).seq
                    continue
                batch = {"Nats-Batch-Id": f"{tag}-{next(batches)}"}
                await nc.publish(
                    subject, out, headers={**fence, **batch, "Nats-Batch-Sequence": "1"}
                )
                final = {"Nats-Msg-Id": f"{iid}:done", "Nats-Batch-Sequence": "2"}
                commit = {**batch, **final, "Nats-Batch-Commit": "1"}
                last = (await js.publish(subject, b"completed", headers=commit)).seq
            if replicas == 1:
                done = {
                    "Nats-Msg-Id": f"{iid}:done",
                    "Nats-Expected-Last-Subject-Sequence": str(last),
                }
                await js.publish(subject, b"completed", headers=done)
            await nc.publish(headers["Bare-Reply"], iid.encode())  # the result notice
            await kv.put(iid, b"completed")  # off the path: the notice went first
            await msg.ack()
        finally:
            slots.release()

    print("consuming", flush=True)
    while True:
        await slots.acquire()
        try:
            (msg,) = await sub.fetch(1, timeout=5)
        except nats.errors.TimeoutError:
            slots.release()
            continue
        if (msg.headers or {}).get("Bare-Kind") == "stop":
            await msg.ack()
            break
        task = asyncio.create_task(run(msg))
        running.add(task)
        task.add_done_callback(running.discard)
    await asyncio.gather(*running)
    await channel.close()
    await nc.close()


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])))
