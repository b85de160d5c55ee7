"""uvicorn's WebSocket protocol with deadlines: a peer that stops reading is cut.

uvicorn (``--ws auto`` is its websockets-sansio protocol here) pings and closes, but every
close it makes is graceful: ``transport.close()`` shuts the socket only once the transport's
write buffer has drained. A peer that never reads never drains it, so the keepalive
timeout's close, the closing handshake's timer and the server's shutdown wait forever, and
an application's ``websocket.close`` (4413) waits like any send for the buffer to drain
first: the connection keeps its listener slot and descriptor. When the transport's buffer
did drain into the kernel, the close leaves an orphaned socket holding what the peer never
read, for as long as the peer's TCP keeps answering window probes.

:class:`ListenerWebSocketProtocol` adds deadlines that end in a reset: ``SO_LINGER`` 0 and
``transport.abort()``, so the kernel discards what is queued, sends RST and frees the
buffers at once; uvicorn then tells the application the connection is gone. "Unacknowledged"
below is what the transport holds plus the kernel's send queue (Linux ``SIOCOUTQ``).

- **Write deadline** (``WEBSOCKET_WRITE_TIMEOUT``, by default the ping timeout): the
  transport's buffer stayed over its high-water mark (writing paused: the peer took next to
  nothing) that long.
- **Close deadline** (``WEBSOCKET_CLOSE_TIMEOUT``): the server sent a close frame (4413,
  4410, 1012 on shutdown, ...) and the closing handshake has not finished that long after:
  unacknowledged bytes mean a reset, none a plain close. A close frame no longer waits for
  the buffer to drain: it is queued behind what is already there.
- **Ping timeout** (``--ws-ping-timeout``): no pong, and unacknowledged bytes: a reset
  instead of uvicorn's 1011 close frame, which the peer would never read.

Run it with ``uvicorn --ws katiedj.ws_protocol:ListenerWebSocketProtocol``.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import socket
import struct
import termios
from collections.abc import Coroutine
from typing import Any

from django.conf import settings
from uvicorn._types import ASGISendEvent, WebSocketCloseEvent
from uvicorn.protocols.utils import ClientDisconnected
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.exceptions import InvalidState

from katiedj import metrics

logger = logging.getLogger(__name__)

# SO_LINGER on with a zero timeout: close() discards unsent data and sends RST.
_RESET_ON_CLOSE = struct.pack("ii", 1, 0)
# The write deadline when neither the setting nor the server's ping timeout gives one.
DEFAULT_WRITE_TIMEOUT = 20.0
# Called as a plain function on the hot path: super() there costs ~10 % of a send.
_uvicorn_send = WebSocketsSansIOProtocol.send


class ListenerWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's websockets-sansio protocol whose stalled connections are reset."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        configured = settings.WEBSOCKET_WRITE_TIMEOUT
        self.write_timeout: float = (
            configured if configured is not None else (self.ping_timeout or DEFAULT_WRITE_TIMEOUT)
        )
        self.close_timeout = settings.WEBSOCKET_CLOSE_TIMEOUT  # uvicorn's own: a fixed 10 s
        self.write_timer: asyncio.TimerHandle | None = None
        self.cut_reason: str | None = None

    # --- The write deadline ------------------------------------------------------------

    def pause_writing(self) -> None:
        super().pause_writing()
        if self.write_timeout > 0 and self.write_timer is None and not self.disconnected:
            self.write_timer = self.loop.call_later(self.write_timeout, self._write_timed_out)

    def resume_writing(self) -> None:
        super().resume_writing()
        self._cancel_write_timer()

    def _write_timed_out(self) -> None:
        self.write_timer = None
        self.cut("write_timeout")

    def _cancel_write_timer(self) -> None:
        if self.write_timer is not None:
            self.write_timer.cancel()
            self.write_timer = None

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_write_timer()
        super().connection_lost(exc)

    # --- Closing ---------------------------------------------------------------------

    def send(self, message: ASGISendEvent) -> Coroutine[Any, Any, None]:
        """uvicorn's ``send``; a close is not held back by a full buffer and has a deadline.

        A plain function returning uvicorn's coroutine: a data frame, the hot path, costs
        one call more (~20 ns), not a coroutine more.
        """
        if message["type"] == "websocket.close":
            return self._send_close(message)
        return _uvicorn_send(self, message)

    async def _send_close(self, message: WebSocketCloseEvent) -> None:
        """A close queued behind whatever is unsent, and given ``close_timeout`` to finish."""
        if not self.writable.is_set() and self._open():
            self._close_behind_unsent(message)
            return
        await super().send(message)
        if self.close_timer is not None:
            # uvicorn's timer would call transport.close(), which waits for the drain.
            self.close_timer.cancel()
            self.close_timer = None
            self._arm_close_deadline()

    def _open(self) -> bool:
        return (
            self.handshake_complete
            and not self.close_sent
            and not self.disconnected
            and self.initial_response is None
            and not self.transport.is_closing()
        )

    def _close_behind_unsent(self, message: WebSocketCloseEvent) -> None:
        """uvicorn's close, without first waiting for the buffer to drain (it may never)."""
        code = message.get("code", 1000)
        reason = message.get("reason", "") or ""
        try:
            self.conn.send_close(code, reason)
        except InvalidState:
            raise ClientDisconnected() from None
        self.queue.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.close_sent = True
        if self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()  # the peer's close reply must be read
        self._arm_close_deadline()

    def _arm_close_deadline(self) -> None:
        if not self.disconnected and self.close_timer is None:
            self.close_timer = self.loop.call_later(self.close_timeout, self._close_timed_out)

    def _close_timed_out(self) -> None:
        """The closing handshake did not finish in time: reset if the peer has not taken
        everything sent (the close frame included), else close."""
        self.close_timer = None
        if self.disconnected:
            return
        if self.unacknowledged():
            self.cut("close_timeout")
        else:
            self.transport.close()

    def keepalive_timeout(self) -> None:
        # No pong within the timeout. With bytes the peer has not taken, uvicorn's 1011 close
        # would wait behind them: in the transport forever, in the kernel (an orphaned
        # socket that a live peer keeps answering window probes for) as long.
        stalled = not (self.close_sent or self.transport.is_closing()) and self.unacknowledged()
        super().keepalive_timeout()
        if stalled:
            self.cut("ping_timeout")

    def shutdown(self) -> None:
        super().shutdown()
        # uvicorn's shutdown waits until every connection is gone: a close stuck behind a
        # stalled peer's buffer would hold it forever.
        self._arm_close_deadline()

    async def run_asgi(self) -> None:
        await super().run_asgi()
        # An application that returns without closing leaves uvicorn's transport.close(),
        # which waits for the drain: the same deadline applies.
        self._arm_close_deadline()

    # --- Cutting ----------------------------------------------------------------------

    def unacknowledged(self) -> int:
        """Bytes sent that the peer has not acknowledged: the transport's buffer and, on
        Linux, the kernel's send queue (SIOCOUTQ; elsewhere only the transport's)."""
        pending = self.transport.get_write_buffer_size()
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError, ValueError, AttributeError):
                queued = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
                pending += struct.unpack("i", queued)[0]
        return pending

    def cut(self, reason: str) -> None:
        """Reset the connection now: unsent bytes are discarded, the peer gets RST, the
        descriptor and buffers are freed and the application hears of a disconnect."""
        if self.disconnected or self.cut_reason is not None:
            return
        self.cut_reason = reason
        self._cancel_write_timer()
        unsent = self.unacknowledged()
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET_ON_CLOSE)
        client = f"{self.client[0]}:{self.client[1]}" if self.client else "-"
        logger.info("%s - WebSocket reset (%s): %d bytes unsent", client, reason, unsent)
        metrics.connection_cut(reason)
        self.transport.abort()
