"""``runner dashboard``: a local web page to watch runs and steer them.

The page lists the runs under a folder; for one run it draws the learning curves live (the
event log streamed as server-sent events), the leaderboard, each trial's settings over time,
the control file's last change and error, and sends a person's orders through exactly the
path ``runner nudge`` takes (``runner.control.nudge.write_change``), then shows what the run
made of each. ``app.py`` is the web application, ``runs.py`` what it reads of a run, and
``static/`` the page, with the chart library it draws with (uPlot, MIT, shipped here so
that nothing loads from the internet).

Needs ``pip install 'panda-caviar[dashboard]'`` (Starlette and uvicorn).
"""

from __future__ import annotations

import ipaddress
import secrets
import socket
from collections.abc import Callable
from dataclasses import dataclass

from runner.dashboard.runs import ServedRuns

INSTALL = "runner dashboard needs Starlette and uvicorn: pip install 'panda-caviar[dashboard]'"


@dataclass(frozen=True)
class Address:
    """Where a dashboard listens, and what a browser may call it."""

    host: str
    port: int

    @property
    def loopback(self) -> bool:
        return self.host == "localhost" or (_ip(self.host) is not None and _ip(self.host).is_loopback)

    @property
    def url_host(self) -> str:
        return f"[{self.host}]" if ":" in self.host else self.host

    def hosts(self) -> list[str]:
        """The ``Host`` names the server answers to: this machine's loopback names when it
        listens there; any when it listens on every address (the token still guards it)."""
        ip = _ip(self.host)
        if ip is not None and ip.is_unspecified:
            return ["*"]
        names = {self.host, self.url_host}
        if self.loopback:
            names |= {"127.0.0.1", "localhost", "[::1]", "::1"}
        return sorted(names)

    def origins(self) -> list[str]:
        """The origins whose pages may call the API: this server's own."""
        return [f"http://{host}:{self.port}" for host in self.hosts() if host != "*" and host != "::1"]


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def listen(host: str, port: int) -> socket.socket:
    """A listening socket at ``host``:``port`` (0: a free port); OSError if it cannot be had."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


def serve(runs: ServedRuns, sock: socket.socket, announce: Callable[[str], None]) -> None:
    """Serve ``runs`` on the listening ``sock`` until interrupted. ``announce`` gets the
    page's address, with its token, once the server is about to answer."""
    import uvicorn

    from runner.dashboard.app import create_app

    host, port = sock.getsockname()[:2]
    address = Address(host, port)
    token = secrets.token_urlsafe(24)
    app = create_app(runs, token, hosts=address.hosts(), origins=address.origins())
    announce(f"http://{address.url_host}:{port}/?token={token}")
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=1, access_log=False)
    uvicorn.Server(config).run(sockets=[sock])
