import json
import os
from pathlib import Path

import uvicorn
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandParser

from katiedj.periodic import start_in_process_beat
from katiedj.secret_key import ensure_secret_key
from networks.sequence import local_allocator
from simulator.services import demo_simulation_ensure

# The Procfile's and the image's log configuration: uvicorn's, with secrets redacted.
LOG_CONFIG = Path(__file__).resolve().parents[2] / "uvicorn_logging.json"
# The Procfile's and the image's `--ws`.
WS_PROTOCOL = "katiedj.ws_protocol:ListenerWebSocketProtocol"


class Command(BaseCommand):
    help = (
        "Run the platform in one process: migrate, set up the demo, then serve HTTP and "
        "WebSocket with uvicorn. This is what `make run` calls."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=settings.PORT)
        parser.add_argument("--no-demo", action="store_true", help="Skip the demo set-up")

    def handle(self, *args: object, **options: object) -> None:
        host, port = str(options["host"]), int(options["port"])  # type: ignore[call-overload]
        settings.VAR_DIR.mkdir(parents=True, exist_ok=True)
        if not os.environ.get("SECRET_KEY"):
            # Never the public development key (the server refuses it): a key of this
            # checkout's own, generated once, so sessions and tokens survive restarts.
            settings.SECRET_KEY = ensure_secret_key(settings.VAR_DIR)
        call_command("migrate", interactive=False, verbosity=0)
        if not options["no_demo"]:
            call_command("bootstrap_demo", host=host, port=port, stdout=self.stdout)
            if settings.DEMO_SIMULATION and not settings.REDIS_URL:
                simulation = demo_simulation_ensure(network_slug=settings.DEMO_NETWORK_SLUG)
                self.stdout.write(f"Simulation {simulation.name!r} is {simulation.status}.")
        if not settings.REDIS_URL:
            # No Celery beat without a broker: run the same schedule in this process.
            start_in_process_beat()
        self.stdout.write(f"Serving on http://{host}:{port}/ (Ctrl-C to stop)")
        self.stdout.flush()
        uvicorn.run(
            "katiedj.asgi:application",
            host=host,
            port=port,
            lifespan="off",
            # uvicorn's WebSocket protocol with write and close deadlines: stalled peers are cut.
            ws=WS_PROTOCOL,
            # Listeners have nothing to say; a large inbound frame is abuse.
            ws_max_size=settings.WEBSOCKET_MAX_INBOUND_BYTES,
            ws_ping_interval=settings.WEBSOCKET_PING_INTERVAL,
            ws_ping_timeout=settings.WEBSOCKET_PING_TIMEOUT,
            # Compression would run once per listener per message: the opposite of
            # serializing once. Measured in bench/README.md.
            ws_per_message_deflate=False,
            # X-Forwarded-For/-Proto count only from these proxies; none by default (uvicorn's
            # own default would believe any local process, and any client behind one).
            proxy_headers=bool(settings.FORWARDED_ALLOW_IPS),
            forwarded_allow_ips=settings.FORWARDED_ALLOW_IPS,
            log_config=json.loads(LOG_CONFIG.read_text()),
            log_level=settings.LOGGING["root"]["level"].lower(),
        )
        if not settings.REDIS_URL:
            # Stopped gracefully: the next start continues the sequence numbers without a gap
            # (listeners resuming with ?since= would otherwise be told of missed messages).
            local_allocator.release()
