"""A real ``runner dashboard`` process, and plain HTTP and event-stream clients for it."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest


class Dashboard:
    """``runner dashboard ARGS --port 0``, its address and token, read from what it prints."""

    def __init__(self, *args: str | Path):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "runner", "dashboard", *map(str, args), "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        first = self.process.stdout.readline()
        if not first.startswith("runner dashboard: "):
            self.process.kill()
            pytest.fail(f"runner dashboard printed {first!r}: {self.process.stderr.read()}")
        self.url = first.split(": ", 1)[1].strip()
        parts = urlsplit(self.url)
        self.host, self.port = parts.hostname, parts.port
        self.base = f"http://{parts.netloc}"
        self.token = parts.query.removeprefix("token=")

    def request(self, method: str, path: str, body: object = None, headers: dict | None = None, token: bool = True):
        """(status, parsed JSON or raw bytes) of one request, with the token unless told otherwise."""
        connection = http.client.HTTPConnection(self.host, self.port, timeout=30)
        sent = {"X-Runner-Token": self.token} if token else {}
        if body is not None:
            sent["Content-Type"] = "application/json"
        sent.update(headers or {})
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        connection.request(method, path, body=data, headers=sent)
        response = connection.getresponse()
        if response.getheader("content-type", "").startswith("text/event-stream"):
            connection.close()  # a stream never ends: its status is the answer
            return response.status, b"(an event stream)"
        raw = response.read()
        connection.close()
        try:
            return response.status, json.loads(raw)
        except ValueError:
            return response.status, raw

    def get(self, path: str, **kw):
        return self.request("GET", path, **kw)

    def order(self, run: str, order: dict, **kw):
        return self.request("POST", f"/api/runs/{run}/orders", body=order, **kw)

    def stream(self, run: str) -> EventStream:
        return EventStream(self, f"/api/runs/{run}/stream?token={self.token}")

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class EventStream:
    """A server-sent event stream, read message by message."""

    def __init__(self, dashboard: Dashboard, path: str):
        self.connection = http.client.HTTPConnection(dashboard.host, dashboard.port, timeout=30)
        self.connection.request("GET", path)
        self.response = self.connection.getresponse()
        assert self.response.status == 200, self.response.read()
        assert self.response.getheader("content-type").startswith("text/event-stream")

    def next(self) -> tuple[str, object]:
        """The next message: (its event name, its data as JSON); comments are skipped."""
        name, data = "message", []
        while True:
            line = self.response.fp.readline().decode()
            if not line:
                raise EOFError("the stream ended")
            line = line.rstrip("\n")
            if line.startswith(":"):
                continue
            if line == "":
                if data:
                    return name, json.loads("\n".join(data))
                continue
            field, _, value = line.partition(": ")
            if field == "event":
                name = value
            elif field == "data":
                data.append(value)

    def until(self, found, timeout: float = 60.0):
        """Read messages until ``found(name, data)`` is truthy; return that value."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = found(*self.next())
            if value:
                return value
        pytest.fail("timed out waiting on the event stream")

    def close(self) -> None:
        self.connection.close()


def wait_for(found, timeout: float = 60.0, what: str = "it"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = found()
        if value:
            return value
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")
