"""``python -m tests.stripe_fake --port P --webhook-url URL --webhook-secret whsec_...``

Prints ``stripe-fake listening on http://127.0.0.1:<port>`` on stdout once it accepts
connections (``--port 0`` picks a free port), then serves until SIGTERM or Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
from typing import NoReturn

from .server import FakeStripeServer, serve


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tests.stripe_fake",
        description="A small stateful Stripe API fake for tests (binds 127.0.0.1 only).",
    )
    parser.add_argument("--port", type=int, default=0, help="0 (default) picks a free port")
    parser.add_argument("--webhook-url", default=None, help="where to POST signed events")
    parser.add_argument("--webhook-secret", default="whsec_test_fake", help="signing secret")
    parser.add_argument(
        "--no-auto-deliver",
        dest="auto_deliver",
        action="store_false",
        help="record events without sending them (send with POST /_test/events/<id>/deliver)",
    )
    parser.add_argument("--verbose", action="store_true", help="log requests to stderr")
    args = parser.parse_args(argv)

    def stop(signum: int, frame: object) -> NoReturn:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)

    def ready(server: FakeStripeServer) -> None:
        sys.stdout.write(f"stripe-fake listening on {server.api_base}\n")
        sys.stdout.flush()

    with contextlib.suppress(KeyboardInterrupt):
        serve(
            args.port,
            webhook_url=args.webhook_url,
            webhook_secret=args.webhook_secret,
            auto_deliver=args.auto_deliver,
            verbose=args.verbose,
            ready=ready,
        )


if __name__ == "__main__":
    main()
