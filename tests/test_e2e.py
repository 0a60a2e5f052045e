"""End to end: a real uvicorn process on a free port, the real client and the CLI over a socket."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from agelens.client import AgelensClient, AgelensHTTPError, AsyncAgelensClient
from tests.conftest import faces_in_test_split, free_port, needs_dataset

pytestmark = pytest.mark.slow


@needs_dataset
def test_client_estimates_a_real_photo(server: str) -> None:
    path, age = faces_in_test_split(40, 45, 1)[0]
    with AgelensClient(server) as client:
        assert client.ready().ready is True
        result = client.estimate(path)
        assert len(result.faces) == 1
        face = result.faces[0]
        assert abs(face.age - age) < 15
        assert face.distribution is not None and len(face.distribution.probabilities) == 101
        slim = client.estimate(path.read_bytes(), distribution=False)
        assert slim.faces[0].distribution is None
        assert slim.faces[0].age == pytest.approx(face.age, abs=0.01)


def test_client_raises_typed_errors(server: str) -> None:
    with AgelensClient(server) as client:
        with pytest.raises(AgelensHTTPError) as err:
            client.estimate(b"definitely not an image")
        assert err.value.status == 422 and err.value.code == "invalid_image" and err.value.request_id
        with pytest.raises(AgelensHTTPError) as err:
            client.estimate(b"\x00" * (3 * 1024 * 1024))
        assert err.value.status == 413 and err.value.code == "payload_too_large"
    # The server survived both.
    assert httpx.get(f"{server}/health").json() == {"status": "ok"}


@needs_dataset
def test_async_client_concurrent_requests(server: str) -> None:
    paths = [p for p, _ in faces_in_test_split(20, 70, 4)]

    async def run() -> list[int]:
        async with AsyncAgelensClient(server) as client:
            results = await asyncio.gather(*(client.estimate(p, distribution=False) for p in paths))
            return [len(r.faces) for r in results]

    assert asyncio.run(run()) == [1, 1, 1, 1]


@needs_dataset
def test_cli_estimate_prints_a_table_and_json(server: str) -> None:
    path: Path = faces_in_test_split(30, 35, 1)[0][0]
    out = subprocess.run(
        [sys.executable, "-m", "agelens.cli", "estimate", "--url", server, str(path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "1 face(s)" in out and "90% interval" in out
    out = subprocess.run(
        [sys.executable, "-m", "agelens.cli", "estimate", "--url", server, "--json", str(path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    import json

    body = json.loads(out)
    assert len(body["faces"]) == 1 and len(body["faces"][0]["distribution"]["ages"]) == 101


def test_cli_reports_unreachable_server() -> None:
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "agelens.cli",
            "estimate",
            "--url",
            f"http://127.0.0.1:{free_port()}",
            __file__,
        ],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 1 and "cannot reach" in res.stderr
