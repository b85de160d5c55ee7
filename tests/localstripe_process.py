"""Run localstripe (an independent Stripe emulator, GPL-3) as a separate process for tests.

localstripe is never imported here or by any test: it runs in its own interpreter, started
with ``sys.executable -c _LAUNCHER`` and spoken to over HTTP only. Its own CLI (``localstripe
--port N``) always listens on every interface (``[::]``, dual stack) and has no host option,
so the launcher serves localstripe's aiohttp application (``localstripe.server:app``) on a
socket it binds to 127.0.0.1 itself, on a port the kernel picks (printed on the first line).
The launcher also turns off localstripe's persistence: it would pickle its whole store to the
fixed path ``/tmp/localstripe.pickle`` after every write (shared by every run on the machine,
and loaded back by a later ``localstripe`` started without ``--from-scratch``). Each process
starts empty, like ``--from-scratch``.

Missing localstripe (``pip install -e '.[dev]'`` installs it) skips the test, or fails it when
``KATIEDJ_REQUIRE_SERVICES`` is set.
"""

from __future__ import annotations

import importlib.util
import os
import select
import subprocess
import sys
import time
from types import TracebackType
from typing import Any, Self

import httpx

READY_PREFIX = "localstripe listening on "
TEST_SECRET_KEY = "sk_test_localstripe"

# Runs in the child interpreter only (localstripe is GPL: never imported in the test process).
_LAUNCHER = """\
import logging, socket, sys
from aiohttp import web
import localstripe.resources
from localstripe.server import app

localstripe.resources.Store.dump_to_disk = lambda self: None
if sys.argv[1] == "verbose":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
sock.bind(("127.0.0.1", 0))
sock.listen(128)
print("localstripe listening on 127.0.0.1:%d" % sock.getsockname()[1], flush=True)
web.run_app(app, sock=sock, print=None, handle_signals=True)
"""


def localstripe_missing() -> str | None:
    """Why localstripe cannot run under this interpreter, or None if it can.

    ``find_spec`` locates the packages without executing (importing) them.
    """
    for module in ("localstripe", "aiohttp"):
        if importlib.util.find_spec(module) is None:
            return (
                f"localstripe is not installed for {sys.executable} (module {module!r} "
                "missing); pip install 'localstripe>=1.15,<2' or the dev extras"
            )
    return None


def _skip_or_fail(reason: str) -> None:
    import pytest

    if os.environ.get("KATIEDJ_REQUIRE_SERVICES"):
        pytest.fail(reason)
    pytest.skip(reason)


class LocalStripeError(RuntimeError):
    """localstripe answered with an error status."""

    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"localstripe answered {status}: {body}")
        self.status = status
        self.body = body


class LocalStripeProcess:
    """localstripe on a free loopback port, in a subprocess; a context manager.

    ``api_base`` is what ``STRIPE_API_BASE`` should be; any ``sk_test_...`` key is accepted.
    ``post``/``get``/``delete`` call its Stripe API directly (form-encoded, like Stripe), for
    what the project itself does not create (plans, payment methods, subscriptions).
    """

    def __init__(self, *, verbose: bool = False, startup_timeout: float = 20.0) -> None:
        self.verbose = verbose
        self.startup_timeout = startup_timeout
        self.port: int | None = None
        self._process: subprocess.Popen[str] | None = None
        self._http: httpx.Client | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def api_base(self) -> str:
        if self.port is None:
            raise RuntimeError("localstripe is not running")
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Self:
        if self._process is not None:
            return self
        missing = localstripe_missing()
        if missing:
            _skip_or_fail(missing)
        self._process = subprocess.Popen(
            [sys.executable, "-c", _LAUNCHER, "verbose" if self.verbose else "quiet"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            self.port = self._read_port()
            self._http = httpx.Client(
                base_url=self.api_base,
                headers={"Authorization": f"Bearer {TEST_SECRET_KEY}"},
                timeout=10.0,
                trust_env=False,  # never through a proxy: it is on loopback
            )
            self._wait_until_answering()
        except BaseException:
            self.stop()
            raise
        return self

    def _read_port(self) -> int:
        assert self._process is not None and self._process.stdout is not None
        stdout = self._process.stdout
        deadline = time.monotonic() + self.startup_timeout
        line = ""
        while not line.endswith("\n"):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("localstripe did not start in time")
            readable, _, _ = select.select([stdout], [], [], remaining)
            if readable:
                chunk = stdout.readline()
                if not chunk:
                    code = self._process.wait(timeout=5)
                    raise RuntimeError(f"localstripe exited with status {code}")
                line += chunk
        if not line.startswith(READY_PREFIX):
            raise RuntimeError(f"unexpected output from localstripe: {line!r}")
        return int(line.strip().rsplit(":", 1)[1])

    def _wait_until_answering(self) -> None:
        assert self._http is not None and self._process is not None
        deadline = time.monotonic() + self.startup_timeout
        while True:
            try:
                if self._http.get("/v1/customers", params={"limit": 1}).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self._process.poll() is not None:
                raise RuntimeError(f"localstripe exited with status {self._process.returncode}")
            if time.monotonic() > deadline:
                raise TimeoutError("localstripe does not answer")
            time.sleep(0.05)

    def stop(self) -> None:
        http, self._http = self._http, None
        if http is not None:
            http.close()
        process, self._process = self._process, None
        if process is None:
            return
        try:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=5)
        finally:
            if process.stdout is not None:
                process.stdout.close()
            self.port = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # -- talking to it -----------------------------------------------------------------------

    def _call(self, method: str, path: str, data: dict[str, Any] | None = None) -> Any:
        if self._http is None:
            raise RuntimeError("localstripe is not running")
        if method == "GET":
            response = self._http.get(path, params=data)
        elif method == "DELETE":
            response = self._http.delete(path)
        else:
            response = self._http.post(path, data=data)
        try:
            body = response.json() if response.content else None
        except ValueError:  # aiohttp's own plain-text errors, e.g. "404: Not Found"
            body = response.text
        if response.status_code >= 400:
            raise LocalStripeError(response.status_code, body)
        return body

    def post(self, path: str, data: dict[str, Any] | None = None) -> Any:
        """POST form fields, flattened Stripe-style by the caller (``items[0][plan]``)."""
        return self._call("POST", path, data)

    def get(self, path: str, params: dict[str, Any] | None = None) -> Any:
        return self._call("GET", path, params)

    def delete(self, path: str) -> Any:
        return self._call("DELETE", path)

    def reset(self) -> None:
        """Forget every object (webhook registrations stay)."""
        self._call("DELETE", "/_config/data")

    def register_webhook(
        self, name: str, *, url: str, secret: str, events: list[str] | None = None
    ) -> None:
        """Send events (all, or only ``events``) to ``url``, signed with ``secret``.

        localstripe signs like Stripe (``Stripe-Signature: t=...,v1=...``) and posts about a
        second after the event. Registering ``name`` again replaces it; there is no removal.
        """
        data: dict[str, Any] = {"url": url, "secret": secret}
        if events is not None:
            data.update({f"events[{index}]": event for index, event in enumerate(events)})
        self._call("POST", f"/_config/webhooks/{name}", data)
