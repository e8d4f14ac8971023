"""Test helpers of the S3 plugin: moto's S3 server over real HTTP on loopback.

``mock_aws`` does not intercept aiobotocore, so tests (this plugin's, the core's docs
tests, an application's) talk to moto's standalone server. Install moto through this
plugin's ``[test]`` extra (see docs/s3.md, "Testing").
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["moto_server"]


@contextmanager
def moto_server() -> Iterator[str]:
    """Run moto's S3 server (``ThreadedMotoServer``) on a free loopback port for the
    ``with`` block; yields its endpoint URL (``http://127.0.0.1:PORT``)."""
    from moto.server import ThreadedMotoServer

    # One log line per request would drown the test output.
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()
