"""``python -m gpu``: load the pipeline, warm it up, then serve the socket protocol."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import threading
import time
from pathlib import Path

from zimage_protocol.constants import DEFAULT_MODEL
from zimage_protocol.endpoints import Endpoint, UnixEndpoint, parse_endpoint
from zimage_protocol.security import WireSecurity
from zimage_protocol.settings import SettingsError

from .engine import ImageEngine
from .logs import configure_logging
from .process_env import apply_process_env_defaults
from .scheduler import GpuScheduler
from .server import WorkerServer, socket_is_live
from .startup_errors import WorkerExit, explain_load_error

CPU_WORKER_NICENESS = 10  # added to the worker's niceness when it has no GPU (see yield_cpu_to_the_bot)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    data_dir = Path(os.environ.get("DATA_DIR", "data"))
    parser = argparse.ArgumentParser(prog="python -m gpu", description="Z-Image GPU worker")
    parser.add_argument("--model", default=os.environ.get("ZIMAGE_MODEL", DEFAULT_MODEL),
                        help="hub id, local folder, or 'tiny'")
    parser.add_argument("--data-dir", type=Path, default=data_dir)
    parser.add_argument("--socket", type=Path, default=None, help="default: DATA_DIR/worker.sock")
    parser.add_argument("--listen", default=None, metavar="ENDPOINT",
                        help="unix:/path or tcp://host:port (TCP needs WORKER_TLS_CERT, WORKER_TLS_KEY and "
                             "WORKER_TOKEN); default: the unix socket of --socket")
    parser.add_argument("--no-warm-up", action="store_true")
    parser.add_argument("--exit-with-parent", action="store_true",
                        help="exit when the process that started us dies (the bot's supervisor)")
    return parser.parse_args(argv)


def exit_with_parent() -> None:
    """A worker orphaned by a killed bot would hold the GPU and the socket: follow the parent out."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    apply_process_env_defaults(os.environ)  # before torch allocates anything
    if args.exit_with_parent:
        exit_with_parent()
    configure_logging()
    try:
        endpoint = listen_endpoint(args)
        security = WireSecurity.from_env(os.environ)
        if not isinstance(endpoint, UnixEndpoint):
            security.require_server_tls()
            security.server_context()  # a certificate that does not load stops us here, with one line
    except SettingsError as exc:
        return fail(WorkerExit.SOCKET, str(exc))
    # Owner-only files (checkpoints, LoRAs, caches), as in the bot (bot/__main__.py make_private); a
    # worker spawned by the bot inherits this umask, an external one sets it here.
    os.umask(0o077)
    args.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    if isinstance(endpoint, UnixEndpoint) and socket_is_live(endpoint.path):
        print(f"another worker already serves {endpoint.path}", file=sys.stderr)
        return WorkerExit.SOCKET
    yield_cpu_to_the_bot()
    engine = ImageEngine(args.model, args.data_dir)
    try:
        engine.load_tokenizer()
    except (OSError, ValueError) as exc:
        return fail(*explain_load_error(args.model, exc))
    try:
        return asyncio.run(serve(engine, endpoint, warm_up=not args.no_warm_up, security=security))
    except KeyboardInterrupt:
        return 0


def yield_cpu_to_the_bot() -> None:
    """A worker without a GPU computes on the same cores as the bot, and torch takes all of them: lowered in
    priority, it leaves the bot's event loop the CPU it needs to answer interactions within Discord's 3 s (and our
    0.3 s). A GPU worker keeps its priority: its CPU work is launching kernels, and a late launch idles the card."""
    import torch

    if torch.cuda.is_available():
        return
    try:
        os.nice(CPU_WORKER_NICENESS)
    except OSError as exc:  # not allowed here (a container's seccomp): run at the bot's priority
        logging.getLogger(__name__).info("worker priority not lowered: %s", exc)


def listen_endpoint(args: argparse.Namespace) -> Endpoint:
    if args.listen and args.socket:
        raise SettingsError("give --listen or --socket, not both")
    if args.listen:
        return parse_endpoint(args.listen, "--listen", listening=True)
    return UnixEndpoint(args.socket or args.data_dir / "worker.sock")


def fail(code: WorkerExit, line: str) -> int:
    """One line for the operator (the supervisor restarts us; the line lands in the bot's log)."""
    print(line, file=sys.stderr)
    return code


async def serve(engine: ImageEngine, endpoint: Endpoint | Path, warm_up: bool, security: WireSecurity | None = None) -> int:
    scheduler = GpuScheduler(engine)
    server = WorkerServer(scheduler, endpoint, security)
    where = endpoint.path if isinstance(endpoint, UnixEndpoint) else endpoint
    try:
        await server.listen()
    except OSError as exc:
        return fail(WorkerExit.SOCKET, f"cannot listen on {where}: {exc.strerror or exc}")
    except SystemExit as exc:  # listen() refuses a path too long for a unix socket
        return fail(WorkerExit.SOCKET, str(exc))
    try:
        await scheduler.load(warm_up)
    except Exception as exc:  # noqa: BLE001 - one line for the operator, not a traceback
        return fail(*explain_load_error(engine.model_name, exc))
    await server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
