"""The command line itself: --version, a closed stdout pipe, Kafka errors in words."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from aiokafka import errors as kafka_errors

from app.errors import is_kafka_error, plain_kafka_error, plain_os_error
from app.metrics import package_version

SAMPLE = Path(__file__).resolve().parents[2] / "samples" / "mparticle-batches.jsonl"


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("MPCIO_")}


def test_version_prints_the_package_version() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "app", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(),
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"mpcio {package_version()}"
    assert package_version() != "unknown"


def test_output_into_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    """``mpcio dry-run big.jsonl | head -1``: far more output than a pipe buffers."""
    big = tmp_path / "big.jsonl"
    big.write_bytes(SAMPLE.read_bytes() * 400)
    process = subprocess.Popen(
        [sys.executable, "-m", "app", "dry-run", str(big)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_env(),
        cwd=tmp_path,
    )
    assert process.stdout is not None
    assert process.stderr is not None
    first = process.stdout.readline()
    process.stdout.close()  # what `head -1` does after its line
    stderr = process.stderr.read().decode()
    code = process.wait(timeout=120)
    assert first.startswith(b'{"type":"person"')
    assert code == 141, stderr
    assert "Traceback" not in stderr
    assert "BrokenPipeError" not in stderr
    assert "Exception ignored" not in stderr


@pytest.mark.parametrize(
    ("error", "words"),
    [
        (kafka_errors.RequestTimedOutError(), "request timed out"),
        (kafka_errors.KafkaTimeoutError(), "timed out"),
        (
            kafka_errors.KafkaConnectionError("Unable to bootstrap from [('h', 1)]"),
            "connection failed: Unable to bootstrap from [('h', 1)]",
        ),
        (kafka_errors.NotLeaderForPartitionError("p 3"), "not leader for partition: p 3"),
        (kafka_errors.UnknownTopicOrPartitionError(), "unknown topic or partition"),
    ],
)
def test_kafka_errors_are_told_in_words(error: Exception, words: str) -> None:
    assert is_kafka_error(error)
    assert plain_kafka_error(error) == words


def test_other_errors_are_not_kafka_errors() -> None:
    assert not is_kafka_error(OSError("x"))


def test_os_errors_are_told_in_words() -> None:
    refused = ConnectionRefusedError(111, "Connection refused")
    assert plain_os_error(refused) == "Connection refused"
    assert plain_os_error(urllib.error.URLError(refused)) == "Connection refused"
    assert plain_os_error(urllib.error.URLError("no host given")) == "no host given"


def test_a_port_in_use_is_one_line_not_a_traceback() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "app", "emulator", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=60,
            env=_env(),
            check=False,
        )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"mpcio: error while attempting to bind on address ('127.0.0.1', {port}): "
        "address already in use"
    )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _status(url: str) -> int:
    request = urllib.request.Request(url)
    request.add_header("Authorization", "Basic ZGVtby1zaXRlOmRlbW8ta2V5")  # demo-site:demo-key
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_emulator_command_serves_pessimistic_mode_and_the_other_region_host() -> None:
    own, other = _free_port(), _free_port()
    command = [sys.executable, "-m", "app", "emulator", "--port", str(own), "--pessimistic",
               "--dedup-window", "5", "--other-region-port", str(other)]  # fmt: skip
    process = subprocess.Popen(
        command, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                own_status = _status(f"http://127.0.0.1:{own}/auth")
                break
            except urllib.error.URLError:
                assert process.poll() is None
                assert time.monotonic() < deadline
                time.sleep(0.2)
        assert own_status == 200
        assert _status(f"http://127.0.0.1:{other}/auth") == 401  # a US workspace on the EU host
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=30)
    assert "region us, pessimistic" in output
