"""Prefect's temporary server for `clasp run`, tied to the life of the command.

With no PREFECT_API_URL, Prefect starts a temporary API server (a `uvicorn`
subprocess, ~230 MB) the first time a flow needs it, and stops it at exit with
an atexit hook. A `clasp run` killed with kill -9 (or by the out-of-memory
killer) never runs that hook: the server was left running with no parent
(issue 13.6). Prefect offers no option for this, and its server's `Popen` is
internal, so here:

- the server is started now, from the main thread, through Prefect's own
  `SubprocessASGIServer` (a per-process singleton: the flows then reuse it);
- a watchdog (a tiny `python -c` process, ~10 MB, no imports beyond the standard
  library) waits for this process to disappear and then stops the server:
  SIGTERM, then SIGKILL after 5 s. It checks the server's command line first, so a
  recycled pid is never hit. It exits by itself when the server is gone.
"""

from __future__ import annotations

import os
import subprocess
import sys

SERVER_MARK = "prefect.server.api.server"

_WATCHDOG = r"""
import os, signal, sys, time
parent, server, mark = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3].encode()

def is_server():
    try:
        with open(f"/proc/{server}/cmdline", "rb") as f:
            return mark in f.read()
    except OSError:
        try:
            os.kill(server, 0)
            return True
        except OSError:
            return False

while os.getppid() == parent:
    if not is_server():
        sys.exit(0)
    time.sleep(0.5)
for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 0.0)):
    if not is_server():
        break
    try:
        os.kill(server, sig)
    except OSError:
        break
    end = time.monotonic() + wait
    while time.monotonic() < end and is_server():
        time.sleep(0.1)
"""


def start_tied_prefect_server() -> int | None:
    """Start Prefect's temporary server if this process would use one, plus its watchdog.

    Returns the server's pid, or None when a Prefect API is configured (PREFECT_API_URL)
    and nothing was started. Call after PREFECT_* environment variables are set.
    """
    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value():
        return None
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()
    server.start()
    process = server.server_process
    if process is None:
        return None
    subprocess.Popen(
        [sys.executable, "-c", _WATCHDOG, str(os.getpid()), str(process.pid), SERVER_MARK],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # a Ctrl-C to the terminal's group leaves it to clean up
        close_fds=True,
    )
    return process.pid
