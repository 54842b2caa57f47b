"""The ``durable`` command line without NATS: conventions every command keeps (issue 17).

Commands that need NATS are covered in tests/integration/test_cli.py; hostile input in
tests/hostile/test_cli_args.py.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

from durable_core import __version__
from durable_core.cli import main
from durable_core.cli._base import read_json
from durable_core.cli._main import cli
from durable_core.errors import InvalidInputError
from durable_core.testing import free_port

LOCAL = {"completion", "dev", "demo"}  # commands that print no result to machine-read


def leaves(group: click.Group = cli, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from leaves(command, (*path, name))
        else:
            yield (*path, name)


def command_at(path: tuple[str, ...]) -> click.Command:
    command: click.Command = cli
    for name in path:
        assert isinstance(command, click.Group)
        command = command.commands[name]
    return command


ALL = sorted(leaves())


def run(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(argv)
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


@pytest.mark.parametrize("path", ALL, ids=[" ".join(p) for p in ALL])
def test_every_argument_and_option_has_help(path: tuple[str, ...]) -> None:
    command = command_at(path)
    assert command.help, f"durable {' '.join(path)} has no help"
    for param in command.params:
        assert getattr(param, "help", None), f"{param.name} of durable {' '.join(path)}"


@pytest.mark.parametrize("path", [p for p in ALL if p[-1] not in LOCAL], ids=str)
def test_every_verb_has_json(path: tuple[str, ...]) -> None:
    assert "as_json" in {p.name for p in command_at(path).params}


@pytest.mark.parametrize("path", [p for p in ALL if p[-1] not in LOCAL | {"plugins"}], ids=str)
def test_connection_flags_after_the_subcommand(path: tuple[str, ...]) -> None:
    flags = {opt for p in command_at(path).params for opt in getattr(p, "opts", [])}
    assert {"--nats-url", "--prefix", "--tls-ca"} <= flags
    assert "--replicas" not in flags  # only processors create the streams (issue 14)


def test_bare_durable_shows_help(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, [])
    assert code == 2 and "Usage: durable" in err and "Commands:" in err and "invoke" in err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, ["--version"])
    assert code == 0 and out.strip() == f"durable, version {__version__}"


def test_a_flag_after_the_subcommand_is_read(capsys: pytest.CaptureFixture[str]) -> None:
    # Checked before connecting: the prefix given after `status` reached the engine config.
    code, _, err = run(capsys, ["status", "x", "--prefix", "Bad.Prefix"])
    assert code == 2 and "must be lower-case" in err, err


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_scripts(capsys: pytest.CaptureFixture[str], shell: str) -> None:
    code, out, _ = run(capsys, ["completion", shell])
    assert code == 0 and "_DURABLE_COMPLETE" in out


def test_json_input_from_text_a_file_and_stdin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert read_json('{"a": 1}', "--args") == {"a": 1}
    doc = tmp_path / "args.json"
    doc.write_text(json.dumps({"big": "x" * 300_000}))  # beyond what a shell passes inline
    assert len(read_json(f"@{doc}", "--args")["big"]) == 300_000
    monkeypatch.setattr(sys, "stdin", open(doc))  # noqa: SIM115 - pytest restores it
    assert len(read_json("-", "--args")["big"]) == 300_000
    with pytest.raises(InvalidInputError, match="--args @/nonexistent: cannot read it"):
        read_json("@/nonexistent", "--args")
    doc.write_text("{oops")
    with pytest.raises(InvalidInputError, match=f"--args @{doc} is not valid JSON"):
        read_json(f"@{doc}", "--args")


def test_bad_input_exits_2_before_connecting(capsys: pytest.CaptureFixture[str]) -> None:
    # hello_workflow takes `dict | None`: a bare string was accepted and failed in the body
    # with an AttributeError (exit 1). Nothing listens on port 1: these never connect.
    url = ["--nats-url", "nats://127.0.0.1:1"]
    code, _, err = run(capsys, ["invoke", "hello_workflow", "--args", '"Ada"', *url])
    assert code == 2 and "does not match its declared type" in err, err
    code, _, err = run(capsys, ["invoke", "order_processing", *url])  # no --args at all
    assert code == 2 and "does not match its declared type" in err, err
    code, _, err = run(capsys, ["list", "--limit", "0", *url])
    assert code == 2 and "--limit" in err, err
    # A schedule of such arguments was stored, and each of its ticks failed.
    create = ["schedule", "create", "s", "--workflow", "hello_workflow", "--every", "1m"]
    code, _, err = run(capsys, [*create, "--args", '"Ada"', *url])
    assert code == 2 and "does not match its declared type" in err, err


@pytest.mark.parametrize(
    "command", [["list"], ["admin", "consumers"], ["admin", "migrate-routing"]], ids=" ".join
)
def test_a_refused_connection_exits_3_within_a_second(
    capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    """The admin commands waited out the whole connect timeout (5 s; outside-in)."""
    started = time.monotonic()
    code, _, err = run(capsys, [*command, "--nats-url", "nats://127.0.0.1:1"])
    assert code == 3 and "cannot reach NATS" in err, err
    assert time.monotonic() - started < 2.5


def test_a_closed_pipe_ends_quietly() -> None:
    """`durable ... | head` used to end in a BrokenPipeError traceback (exit 1)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "durable_core.cli", "completion", "bash"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader is gone before the first write
    code = proc.wait(timeout=30)
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert code == 141 and "Traceback" not in err and "Exception ignored" not in err, err


@pytest.mark.parametrize(
    ("flag", "what", "reuse_port"),
    [
        ("--nats-port", "NATS", False),
        # gRPC servers bind with SO_REUSEPORT: a second hello service would have shared the
        # port silently. The probe binds without it, so it notices.
        ("--grpc-port", "the hello service", True),
        ("--inspector-port", "the inspector", False),
    ],
)
def test_dev_names_a_taken_port_in_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, flag: str, what: str, reuse_port: bool
) -> None:
    ports = {f: free_port() for f in ("--nats-port", "--grpc-port", "--inspector-port")}
    with socket.socket() as taken:
        if reuse_port:
            taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        taken.bind(("127.0.0.1", ports[flag]))
        taken.listen()
        argv = ["dev", "--data-dir", str(tmp_path), "--metrics-port", "0"]
        for f, port in ports.items():
            argv += [f, str(port)]
        code, out, err = run(capsys, argv)
    assert code == 2, err
    assert err.strip() == (
        f"durable: invalid input: port {ports[flag]} ({what}) is already in use: stop what "
        f"listens there or pick another with {flag} N"
    )
    assert out == "" and not (tmp_path / "nats").exists()  # nothing was started
