"""`artfs ui`: serve the registry's read-only web page until interrupted.

Served by waitress: a pure-Python, production-grade WSGI server with no dependencies of its
own, maintained by the Pylons project; it serves requests on a small thread pool, which suits
the registry's blocking reads, and unlike Flask's development server it is meant to stay up.
Flask and waitress are imported here, when the command runs, so other commands never pay for
them.
"""

from __future__ import annotations

import argparse
import threading
import webbrowser

from ..errors import ArtfsError
from ..registry import Registry

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8470
#: Requests served at once: a slow remote listing must not hold up the rest of the page.
THREADS = 8


def add_command(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("ui", parents=[common],
                       help="browse the registry in a web browser (read-only, local)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT,
                   help=f"port to listen on; 0 picks a free one (default: {DEFAULT_PORT})")
    p.add_argument("--host", default=DEFAULT_HOST,
                   help=f"address to listen on (default: {DEFAULT_HOST}, this machine only)")
    p.add_argument("--open", action="store_true", help="open the page in a web browser")
    p.set_defaults(func=cmd_ui)


def cmd_ui(args: argparse.Namespace) -> None:
    if not 0 <= args.port <= 65535:
        raise ArtfsError(f"--port {args.port} is not a port number (0-65535)")
    import waitress

    from .app import create_app

    reg = Registry(args.registry)
    try:
        try:
            server = waitress.create_server(create_app(reg), host=args.host, port=args.port,
                                            threads=THREADS, ident="artfs-ui")
        except OSError as e:
            raise ArtfsError(f"cannot listen on {args.host}:{args.port}: {e.strerror}") from e
        host = server.effective_host  # type: ignore[union-attr]
        shown = f"[{host}]" if ":" in str(host) else host
        url = f"http://{shown}:{server.effective_port}/"  # type: ignore[union-attr]
        print(f"artfs ui: {reg.url} at {url} (Ctrl-C stops)", flush=True)
        if args.open:
            threading.Thread(target=webbrowser.open, args=(url,), daemon=True).start()
        try:
            server.run()
        finally:
            server.close()
    finally:
        reg.close()
