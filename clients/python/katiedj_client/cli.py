"""``katiedj-listen``: print or record the samples broadcast on a KatieDJ WebSocket."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import re
import signal
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from websockets.exceptions import InvalidURI

from katiedj_client.listener import Listener, ListenerRejected

EXIT_OK = 0
EXIT_OUTPUT_ERROR = 1
EXIT_REJECTED = 2

# URLs are logged with -v and in errors; a ?token= there is a credential (terminals are
# recorded, logs are shared): print the URL without it.
_TOKEN_PARAMETER = re.compile(r"(?i)([?&;](?:token|access_token)=)[^&;#\s]*")
_TOKEN_VALUE = re.compile(r"\b(kdjp?_)[0-9A-Za-z]{20,}|\b(kdje\.)[0-9A-Za-z_-]+\.[0-9A-Za-z_-]+")


def redact(text: str) -> str:
    """``text`` without token values (query parameters, personal and entitlement tokens)."""
    text = _TOKEN_PARAMETER.sub(r"\1[redacted]", text)
    return _TOKEN_VALUE.sub(lambda m: (m.group(1) or m.group(2)) + "[redacted]", text)


class _RedactTokens(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(str(record.msg))
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        return True


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="katiedj-listen",
        description="Listen to a KatieDJ network and write each sample as one JSON line.",
    )
    parser.add_argument("url", help="e.g. ws://127.0.0.1:8000/ws/networks/<slug>/")
    parser.add_argument(
        "--token",
        default=os.environ.get("KATIEDJ_TOKEN"),
        help="API token, sent as 'Authorization: Bearer <token>' (default: $KATIEDJ_TOKEN, "
        "which keeps it out of the process list)",
    )
    parser.add_argument("--out", metavar="FILE.jsonl", help="append to this file, not stdout")
    parser.add_argument(
        "--count", type=_positive_int, metavar="N", help="exit after N messages (default: never)"
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="after a reconnect, first receive what was published meanwhile (no losses)",
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log connection events to stderr"
    )
    return parser


async def _listen(listener: Listener, sink: TextIO, count: int | None) -> None:
    loop = asyncio.get_running_loop()
    # SIGTERM (systemd, docker stop) should end as cleanly as Ctrl-C does.
    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGTERM, listener.stop)
    received = 0
    async with listener:
        async for message in listener:
            sink.write(_dump(message) + "\n")
            # Flush per line so `tail -f` and pipes see samples as they arrive.
            sink.flush()
            received += 1
            if count is not None and received >= count:
                break


def _dump(message: Any) -> str:
    return json.dumps(message, separators=(",", ":"))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``katiedj-listen``; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="katiedj-listen: %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(_RedactTokens())
    try:
        listener = Listener(args.url, token=args.token, resume=args.resume)
    except (InvalidURI, ValueError) as exc:
        parser.error(redact(str(exc)))

    try:
        sink = open(args.out, "a", encoding="utf-8") if args.out else sys.stdout  # noqa: SIM115
    except OSError as exc:
        print(f"katiedj-listen: cannot open {args.out}: {exc.strerror}", file=sys.stderr)
        return EXIT_OUTPUT_ERROR

    try:
        asyncio.run(_listen(listener, sink, args.count))
    except KeyboardInterrupt:
        return EXIT_OK
    except ListenerRejected as exc:
        print(f"katiedj-listen: {redact(args.url)}: {exc}", file=sys.stderr)
        return EXIT_REJECTED
    except BrokenPipeError:
        # The reader went away (e.g. `| head`); point stdout at devnull so the interpreter's
        # final flush does not raise a second time.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    finally:
        if sink is not sys.stdout:
            sink.close()
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
