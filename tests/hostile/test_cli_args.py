"""Hostile command lines for ``durable`` (run in-process through ``main``).

Bad input must end with exit code 2 and one clear line on stderr, never a traceback. Commands
that need NATS are pointed at a port nobody listens on and must exit 3; those cost a connect
timeout each, so there are only a few.
"""

from __future__ import annotations

import io
import json
import os
import re
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from durable_core import ConfigError, EngineConfig
from durable_core.cli import main
from durable_core.cli._main import cli
from durable_core.testing import free_port

# Every subcommand the CLI has (hypothesis once drew "pause" as an unknown one), from click.
COMMANDS = set(cli.commands)
PREFIX = re.compile(r"[a-z][a-z0-9_]{0,31}")

hostile_settings = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
# Command-line arguments arrive as str; undecodable bytes become lone surrogates
# (surrogateescape), so those are fair game too.
arg_text = st.text(st.characters(exclude_categories=()) | st.characters(categories=["Cs"]))


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI falls back to NATS_URL and DURABLE_*; these tests see none of the caller's."""
    for name in list(os.environ):
        if name.startswith("DURABLE_") or name == "NATS_URL":
            monkeypatch.delenv(name)


@pytest.fixture(scope="module")
def dead_url() -> str:
    """A NATS URL where nothing listens (refused at once, retried until the connect timeout)."""
    return f"nats://127.0.0.1:{free_port()}"


def run(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str, str]:
    """``main(argv)`` -> (exit code, stdout, stderr); any exception fails the test."""
    capsys.readouterr()
    # A real stderr escapes what it cannot encode (Python's default for stderr), so argparse can
    # echo undecodable argv bytes (lone surrogates); the capture stream must do the same.
    sys.stderr.reconfigure(errors="backslashreplace")  # type: ignore[union-attr]
    try:
        code = main(argv)
    except SystemExit as e:  # main() returns its code; it must never exit by itself
        pytest.fail(f"main() raised SystemExit({e.code!r})")
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def assert_usage_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    assert err.strip(), "exit 2 without a message"
    for needle in needles:
        assert needle in err, err


# -- click: unknown commands, flags and values ---------------------------------------------


@hostile_settings
@given(command=arg_text.filter(lambda s: s not in COMMANDS and not s.startswith("-")))
@example(command="")
@example(command="INVOKE")
@example(command="\ud800")
def test_unknown_command_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], dead_url: str, command: str
) -> None:
    code, _, err = run(capsys, ["--nats-url", dead_url, command])
    assert_usage_error(code, err, "Usage: durable", "No such command")


@hostile_settings
@given(
    command=st.sampled_from(
        [["invoke", "wf"], ["status", "x"], ["signal", "x", "n"], ["awakeable", "resolve", "a"]]
    ),
    flag=st.text("abcdefghijklmnopqrstuvwxyz-_\u00e9\ufeff", max_size=12).map(lambda s: "--zz" + s),
    value=arg_text.filter(lambda s: not s.startswith("-")),
)
def test_unknown_flags_are_a_usage_error(
    capsys: pytest.CaptureFixture[str], dead_url: str, command: list[str], flag: str, value: str
) -> None:
    code, _, err = run(capsys, ["--nats-url", dead_url, *command, flag, value])
    assert_usage_error(code, err, "No such option")


@hostile_settings
@given(
    flag=st.sampled_from(["--timeout", "--delay"]),
    value=arg_text.filter(lambda s: not _is_number(s) and not s.startswith("-")),
)
def test_non_numeric_numbers_are_a_usage_error(
    capsys: pytest.CaptureFixture[str], dead_url: str, flag: str, value: str
) -> None:
    code, _, err = run(capsys, ["--nats-url", dead_url, "invoke", "wf", flag, value])
    assert_usage_error(code, err, flag)


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["invoke"],
        ["signal", "only-id"],
        ["awakeable"],
        ["awakeable", "poke", "x"],
        ["status"],
    ],
    ids=["nothing", "invoke", "signal", "awakeable", "awakeable-action", "status"],
)
def test_missing_arguments_are_a_usage_error(
    capsys: pytest.CaptureFixture[str], dead_url: str, argv: list[str]
) -> None:
    code, _, err = run(capsys, ["--nats-url", dead_url, *argv])
    assert_usage_error(code, err, "Usage: durable")


# -- JSON arguments (parsed before connecting) -------------------------------------------------


def _invalid_json(text: str) -> bool:
    try:
        json.loads(text)
    except json.JSONDecodeError:
        return True
    except (ValueError, RecursionError):
        return False  # pinned separately below
    return False


def _inline(text: str) -> bool:
    """Inline JSON: "-" means stdin and "@path" a file (pinned by their own tests below)."""
    return text != "-" and not text.startswith("@")


invalid_json = (
    st.text(max_size=200) | st.sampled_from(["{", "[1,", "{'a': 1}", "None", "True", "\x00", "é"])
).filter(lambda t: _invalid_json(t) and _inline(t))


@hostile_settings
@given(text=invalid_json)
@example(text="")
@example(text='{"name": "Ada"')
def test_bad_json_args_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], dead_url: str, text: str
) -> None:
    # --args=TEXT: a text starting with "-" would otherwise be read as a flag.
    code, _, err = run(
        capsys, ["--nats-url", dead_url, "invoke", "hello_workflow", f"--args={text}"]
    )
    assert_usage_error(code, err, "durable: invalid input:", "not valid JSON")


@hostile_settings
@given(text=invalid_json)
def test_bad_json_signal_payload_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], dead_url: str, text: str
) -> None:
    code, _, err = run(
        capsys, ["--nats-url", dead_url, "signal", "inv-1", "go", f"--payload={text}"]
    )
    assert_usage_error(code, err, "not valid JSON")


def test_bad_json_payload_message_names_the_payload_flag(
    capsys: pytest.CaptureFixture[str], dead_url: str
) -> None:
    code, _, err = run(capsys, ["--nats-url", dead_url, "signal", "inv-1", "go", "--payload", "{"])
    assert_usage_error(code, err, "--payload")


@pytest.mark.parametrize("flag", ["--args", "--payload"])
def test_unreadable_json_files_and_bad_stdin_are_usage_errors(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    dead_url: str,
    tmp_path: Path,
    flag: str,
) -> None:
    command = ["invoke", "wf"] if flag == "--args" else ["signal", "inv-1", "go"]
    missing = tmp_path / "nope.json"
    code, _, err = run(capsys, ["--nats-url", dead_url, *command, f"{flag}=@{missing}"])
    assert_usage_error(code, err, f"{flag} @{missing}: cannot read it")
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\xff\xfe{")
    code, _, err = run(capsys, ["--nats-url", dead_url, *command, f"{flag}=@{binary}"])
    assert_usage_error(code, err, "cannot read it")
    monkeypatch.setattr(sys, "stdin", io.StringIO('{"half": '))
    code, _, err = run(capsys, ["--nats-url", dead_url, *command, f"{flag}=-"])
    assert_usage_error(code, err, f"{flag} (stdin) is not valid JSON")


def test_huge_bad_json_args_gives_a_short_message(
    capsys: pytest.CaptureFixture[str], dead_url: str
) -> None:
    text = '{"name": "' + "A" * 1_000_000  # unterminated
    code, _, err = run(capsys, ["--nats-url", dead_url, "invoke", "hello_workflow", "--args", text])
    assert_usage_error(code, err, "not valid JSON")
    assert len(err) < 2000


@pytest.mark.parametrize("text", ["[" * 100_000, "1" * 5000], ids=["deep", "digits"])
def test_resource_exhausting_json_args_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], dead_url: str, text: str
) -> None:
    code, _, err = run(capsys, ["--nats-url", dead_url, "invoke", "wf", "--args", text])
    assert_usage_error(code, err, "not valid JSON")


# -- engine and connection settings ------------------------------------------------------------


# A URL that fails at once: should the check not happen, the test fails fast (exit 3).
INSTANT_FAIL_URL = "nats://[::1"


def test_replicas_is_not_a_cli_option(capsys: pytest.CaptureFixture[str]) -> None:
    # Only processors create the streams (their `replicas` setting); the CLI uses what exists.
    code, _, err = run(capsys, ["--nats-url", INSTANT_FAIL_URL, "status", "x", "--replicas", "3"])
    assert_usage_error(code, err, "--replicas")


@hostile_settings
@given(prefix=arg_text.filter(lambda p: p and not PREFIX.fullmatch(p) and not p.startswith("-")))
@example(prefix="Durable")
@example(prefix="a.b")
@example(prefix="a*")
@example(prefix="x" * 33)
def test_bad_prefix_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], dead_url: str, prefix: str
) -> None:
    if prefix.endswith("\n") and PREFIX.fullmatch(prefix[:-1]):
        return  # pinned by test_prefix_with_a_trailing_newline_is_refused
    code, _, err = run(capsys, ["--nats-url", dead_url, "--prefix", prefix, "status", "x"])
    assert_usage_error(code, err, "prefix", "must be lower-case")


@given(prefix=st.from_regex(PREFIX, fullmatch=True).map(lambda p: p + "\n"))
@settings(max_examples=10)
def test_prefix_with_a_trailing_newline_is_refused(prefix: str) -> None:
    with pytest.raises(ConfigError):
        EngineConfig(prefix=prefix)


@pytest.mark.parametrize("url", [" , ", ",", " "])
def test_empty_nats_url_is_a_usage_error(capsys: pytest.CaptureFixture[str], url: str) -> None:
    code, _, err = run(capsys, ["--nats-url", url, "status", "x"])
    assert_usage_error(code, err, "NATS URL is empty")


@pytest.mark.parametrize("flag", ["--tls-ca", "--tls-cert"])
def test_missing_tls_file_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], dead_url: str, tmp_path: Path, flag: str
) -> None:
    missing = str(tmp_path / "nope.pem")
    code, _, err = run(capsys, ["--nats-url", dead_url, flag, missing, "status", "x"])
    assert_usage_error(code, err, missing)


def test_missing_creds_file_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], dead_url: str, tmp_path: Path
) -> None:
    missing = str(tmp_path / "user.creds")
    code, _, err = run(capsys, ["--nats-url", dead_url, "--nats-creds", missing, "status", "x"])
    assert "No module named" not in err
    assert_usage_error(code, err, missing)


# -- needs NATS: the unreachable server is reported, not a traceback (exit 3) ------------------


def test_malformed_nats_url_is_reported(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, ["--nats-url", "nats://[::1", "status", "x"])
    assert code == 3 and "cannot reach NATS at nats://[::1" in err, err


@pytest.mark.parametrize(
    "argv",
    [
        ["status", "\u00e9\u202e\U0001f600"],
        ["invoke", "hello_workflow", "--args", json.dumps({"name": "x" * 2_000_000})],
    ],
    ids=["unicode-id", "2MB-args"],
)
def test_needs_nats_and_exits_3_when_unreachable(
    capsys: pytest.CaptureFixture[str], dead_url: str, argv: list[str]
) -> None:
    code, out, err = run(capsys, ["--nats-url", dead_url, *argv])
    assert code == 3, err
    assert f"cannot reach NATS at {dead_url}" in err
    assert out == "" and len(err) < 1000
