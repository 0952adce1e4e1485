"""HTTP servers on 127.0.0.1 in a thread: something real for a test to fetch images from or talk to."""

from __future__ import annotations

import contextlib
import functools
import http.server
import threading
from typing import Iterator


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder's files without logging each request into the test output."""

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def serving(handler) -> Iterator[str]:
    """Serve `handler` on a free port of 127.0.0.1 while the block runs; yields `http://127.0.0.1:PORT`."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def serving_folder(folder) -> contextlib.AbstractContextManager[str]:
    """Serve the files of `folder` (see `serving`)."""
    return serving(functools.partial(QuietHandler, directory=str(folder)))
