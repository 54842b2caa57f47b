"""Typed configuration objects and retry policies."""

from __future__ import annotations

import dataclasses
import random
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from durable_core import ConfigError, EngineConfig, NatsConfig, RetryPolicy, WorkerConfig
from durable_core._transport.connection import ssl_context
from durable_core.retry import DEFAULT_RETRY, NO_RETRY

# -- EngineConfig --------------------------------------------------------------------------------


def test_engine_defaults_are_valid() -> None:
    config = EngineConfig()
    assert (config.prefix, config.replicas, config.max_payload) == ("durable", 1, 500_000)


@pytest.mark.parametrize("replicas", [1, 3, 5])
def test_engine_accepts_odd_replica_counts(replicas: int) -> None:
    assert EngineConfig(replicas=replicas).replicas == replicas


@pytest.mark.parametrize(
    ("kwargs", "names"),
    [
        ({"prefix": "Durable"}, "prefix"),
        ({"prefix": "1st"}, "prefix"),
        ({"prefix": "a-b"}, "prefix"),
        ({"prefix": "a.b"}, "prefix"),
        ({"prefix": "x" * 33}, "prefix"),
        ({"prefix": ""}, "prefix"),
        ({"replicas": 2}, "replicas"),
        ({"replicas": 0}, "replicas"),
        ({"max_payload": 1023}, "max_payload"),
        ({"max_payload": 64 * 1024 * 1024 + 1}, "max_payload"),
    ],
)
def test_engine_rejects_invalid_values(kwargs: dict[str, Any], names: str) -> None:
    with pytest.raises(ConfigError, match=names):
        EngineConfig(**kwargs)


def test_configs_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        EngineConfig().replicas = 3  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        WorkerConfig().max_concurrent = 1  # type: ignore[misc]


# -- WorkerConfig --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "names"),
    [
        ({"max_concurrent": 0}, "max_concurrent"),
        ({"max_concurrent": 100_001}, "max_concurrent"),
        ({"ack_wait": timedelta(milliseconds=999)}, "ack_wait"),
        ({"ack_wait": timedelta(seconds=10), "heartbeat": timedelta(seconds=6)}, "heartbeat"),
    ],
)
def test_worker_rejects_invalid_values(kwargs: dict[str, Any], names: str) -> None:
    with pytest.raises(ConfigError, match=names):
        WorkerConfig(**kwargs)


def test_worker_limits_are_inclusive() -> None:
    assert WorkerConfig(max_concurrent=1).max_concurrent == 1
    assert WorkerConfig(max_concurrent=100_000, ack_wait=timedelta(seconds=1)).max_concurrent


def test_heartbeat_defaults_to_a_sixth_of_ack_wait() -> None:
    assert WorkerConfig(ack_wait=timedelta(seconds=30)).heartbeat_interval == 5.0
    config = WorkerConfig(ack_wait=timedelta(seconds=30), heartbeat=timedelta(seconds=2))
    assert config.heartbeat_interval == 2.0
    assert WorkerConfig(heartbeat=timedelta(0)).heartbeat_interval == 0.0


# -- NatsConfig ----------------------------------------------------------------------------------


def test_nats_url_list_is_split_and_trimmed() -> None:
    config = NatsConfig.from_url(" nats://a:4222 , nats://b:4222,, ", user="u")
    assert config.servers == ("nats://a:4222", "nats://b:4222")
    assert config.user == "u"


@pytest.mark.parametrize("url", ["", " , "])
def test_empty_nats_url_is_a_config_error(url: str) -> None:
    with pytest.raises(ConfigError, match="NATS URL is empty"):
        NatsConfig.from_url(url)


@pytest.mark.parametrize("setting", ["creds_file", "nkey_seed_file", "tls_ca", "tls_cert"])
def test_missing_nats_files_are_config_errors_naming_setting_and_path(
    tmp_path: Path, setting: str
) -> None:
    missing = str(tmp_path / "nope")
    config = NatsConfig(**{setting: missing})  # built without looking: settings tests need that
    with pytest.raises(ConfigError, match=f"{setting} '{missing}' does not exist"):
        config.check_files()
    with pytest.raises(ConfigError, match=missing):
        ssl_context(config)  # what connect_nats runs before connecting


def test_a_file_that_is_not_pem_is_a_config_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    with pytest.raises(ConfigError, match="tls_ca .* is not a usable CA file"):
        ssl_context(NatsConfig(tls_ca=str(junk)))
    with pytest.raises(ConfigError, match="not a usable certificate and key"):
        ssl_context(NatsConfig(tls_cert=str(junk), tls_key=str(junk)))


def test_prefix_must_match_whole() -> None:
    for prefix in ("durable\n", "durable\n\n", "\ndurable"):
        with pytest.raises(ConfigError, match="prefix"):
            EngineConfig(prefix=prefix)


# -- RetryPolicy ---------------------------------------------------------------------------------


def test_delays_grow_by_the_coefficient_and_cap_at_the_maximum() -> None:
    policy = RetryPolicy(
        initial_interval=timedelta(milliseconds=100),
        backoff_coefficient=2,
        maximum_interval=timedelta(seconds=1),
        jitter=0,
    )
    delays = [policy.delay(n) for n in range(1, 8)]
    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0])


def test_coefficient_one_keeps_the_delay_constant() -> None:
    policy = RetryPolicy(
        initial_interval=timedelta(milliseconds=50), backoff_coefficient=1, jitter=0
    )
    assert {policy.delay(n) for n in range(1, 6)} == {0.05}


def test_jitter_spreads_delays_within_its_bounds() -> None:
    policy = RetryPolicy(initial_interval=timedelta(seconds=1), jitter=0.25)
    rng = random.Random(7)
    samples = [policy.delay(1, rng) for _ in range(500)]
    assert all(0.75 <= d <= 1.25 for d in samples)
    assert min(samples) < 0.85 and max(samples) > 1.15  # really spread, not constant


def test_jitter_applies_after_the_cap() -> None:
    policy = RetryPolicy(
        initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=2), jitter=0.5
    )
    rng = random.Random(1)
    assert all(1.0 <= policy.delay(10, rng) <= 3.0 for _ in range(200))


def test_allows_another_counts_the_first_attempt() -> None:
    policy = RetryPolicy(maximum_attempts=3)
    assert [policy.allows_another(n) for n in (1, 2, 3, 4)] == [True, True, False, False]


def test_zero_maximum_attempts_is_unlimited() -> None:
    assert RetryPolicy(maximum_attempts=0).allows_another(10_000)


def test_predefined_policies() -> None:
    assert not NO_RETRY.allows_another(1)
    assert DEFAULT_RETRY.allows_another(9) and not DEFAULT_RETRY.allows_another(10)


@pytest.mark.parametrize(
    ("kwargs", "names"),
    [
        ({"backoff_coefficient": 0.5}, "backoff_coefficient"),
        ({"maximum_attempts": -1}, "maximum_attempts"),
        ({"jitter": -0.1}, "jitter"),
        ({"jitter": 1.5}, "jitter"),
        ({"initial_interval": timedelta(0)}, "initial_interval"),
    ],
)
def test_retry_policy_rejects_invalid_values(kwargs: dict[str, Any], names: str) -> None:
    with pytest.raises(ConfigError, match=names):
        RetryPolicy(**kwargs)
