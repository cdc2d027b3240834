"""``dsbuild ui``: bind, print the URL with its token, serve the app with uvicorn until Ctrl-C.

:func:`serve` refuses a non-loopback ``host`` unless ``allow_remote`` (then it warns),
binds the socket itself (port 0 = a free port), prints
``http://HOST:PORT/?token=…`` on stdout (flushed, so a caller can read it) and runs
uvicorn on that socket with its access log off (the first request's URL holds the token).
Ctrl-C or SIGTERM stops it: uvicorn shuts down gracefully, then raises the interrupt again
(``KeyboardInterrupt``, or :class:`~dsbuild.errors.Terminated` under ``dsbuild``'s SIGTERM
handler); ``dsbuild ui`` exits quietly on either (0 / 143).
"""

from __future__ import annotations

import socket
import sys
from typing import TYPE_CHECKING, TextIO

from dsbuild.errors import DsbuildError
from dsbuild.ui.security import is_loopback, new_token

if TYPE_CHECKING:  # pragma: no cover
    from dsbuild.manifest import Manifest

DEFAULT_PORT = 8765


def pick_dataset(manifest: "Manifest", dataset: str | None) -> str:
    """``dataset`` (checked against the manifest), or the only dataset in the catalog; DsbuildError otherwise."""
    from dsbuild.catalog import Catalog

    if dataset is not None:
        manifest.dataset(dataset)
        return dataset
    with Catalog.open_readonly(manifest.catalog) as cat:
        names = [n for n in cat.datasets_in_catalog() if n in manifest.datasets]
    if len(names) == 1:
        return names[0]
    if not names:
        raise DsbuildError(f"no dataset of the manifest is in the catalog {manifest.catalog} — run `dsbuild build` first")
    raise DsbuildError(f"the catalog holds several datasets ({', '.join(names)}) — name one: dsbuild ui {names[0]}", exit_code=2)


def check_host(host: str, allow_remote: bool, *, err: TextIO | None = None) -> None:
    """Refuse a ``host`` that is not loopback unless ``allow_remote``; with it, print a warning on ``err``."""
    if host in ("0.0.0.0", "::", ""):
        raise DsbuildError(f"--host {host or '(empty)'} listens on every network — give the one address to listen on "
                           "(e.g. --host 192.168.1.20) with --allow-remote", exit_code=2)
    if is_loopback(host):
        return
    if not allow_remote:
        raise DsbuildError(f"--host {host} is not loopback: anyone who can reach it and learns the token can read and "
                           "change your catalog — add --allow-remote if you mean it", exit_code=2)
    print(f"warning: serving on {host}, reachable from the network; the token in the URL is the only protection "
          "(plain HTTP: anyone on the path can read it)", file=err or sys.stderr, flush=True)


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host``:``port`` (0: any free port); DsbuildError when the port is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise DsbuildError(f"cannot listen on {host}:{port} ({exc.strerror or exc}) — choose another --port", exit_code=2) from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def url_of(host: str, port: int, token: str) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/?token={token}"


def serve(manifest: "Manifest", dataset: str | None = None, *, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
          allow_remote: bool = False, open_browser: bool = True, out: TextIO | None = None) -> None:
    """Run the review app of ``dataset`` until interrupted (see the module docstring)."""
    import uvicorn

    from dsbuild.ui.app import UiConfig, create_app

    check_host(host, allow_remote)
    name = pick_dataset(manifest, dataset)
    sock = bind(host, port)
    port = sock.getsockname()[1]
    token = new_token()
    app = create_app(UiConfig(manifest=manifest, dataset=name, host=host, port=port, token=token))
    url = url_of(host, port, token)
    out = out or sys.stdout
    print(f"dsbuild ui: reviewing '{name}' of {manifest.catalog}", file=out)
    print(url, file=out)
    print("open the URL above (it holds the session token); Ctrl-C stops the app", file=out, flush=True)
    if open_browser:
        import threading
        import webbrowser

        threading.Timer(0.5, webbrowser.open, args=(url,)).start()
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", server_header=False,
                            date_header=False)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        app.held.close()
        sock.close()
