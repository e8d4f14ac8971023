"""How ``voice-infra serve`` runs uvicorn: :func:`http_protocol` is its ``http`` option.

uvicorn parses HTTP with httptools (C, what the web extra installs) when it can, else with
h11 (pure Python). h11 refuses a request head (request line and header fields) past 16 KiB;
uvicorn's httptools protocol buffers a head of any size, so a client could hold
megabytes of one header line in the server's memory per connection. The service runs
httptools behind the same kind of bound: a head past :data:`MAX_HEAD_BYTES` is answered
``431 Request Header Fields Too Large`` and the connection closed.
"""

from __future__ import annotations

import logging
from typing import Any

from voice_infra.masking import mask_query

__all__ = ["MAX_HEAD_BYTES", "MaskedAccessLog", "http_protocol"]

#: The largest request head the service reads (h11 stops at 16 KiB; browsers send a few).
MAX_HEAD_BYTES = 64 * 1024

_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain; charset=utf-8"
    b"\r\nconnection: close\r\ncontent-length: %d\r\n\r\n%s"
)


def http_protocol() -> Any:
    """uvicorn's ``http`` option: httptools with a bounded request head where httptools is
    installed, else ``"h11"`` (which bounds heads itself)."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:
        return "h11"

    class BoundedHttpToolsProtocol(HttpToolsProtocol):
        """uvicorn's httptools protocol that refuses a request head past MAX_HEAD_BYTES.

        The parser reports a header only once it is complete, so the head is measured in
        the bytes fed while it is incomplete: each chunk that leaves the parser inside a
        head counts whole, except the chunk a pipelined request's head began in, whose
        split is unknown (so a head is never over-counted, and at most one chunk more
        than the limit is ever held).
        """

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._in_head = True  # a connection opens with a request head
            self._head_bytes = 0
            self._refused = False

        def on_message_begin(self) -> None:
            self._in_head = True
            self._head_bytes = 0
            super().on_message_begin()

        def on_headers_complete(self) -> None:
            self._in_head = False
            super().on_headers_complete()

        def data_received(self, data: bytes) -> None:
            if self._refused:
                return
            in_head_before = self._in_head
            super().data_received(data)
            if self._in_head and in_head_before:
                self._head_bytes += len(data)
                if self._head_bytes > MAX_HEAD_BYTES:
                    self._refuse()

        def _refuse(self) -> None:
            self._refused = True
            message = f"request head over {MAX_HEAD_BYTES} bytes".encode()
            self.logger.warning("refused a request head over %d bytes", MAX_HEAD_BYTES)
            if not self.transport.is_closing():
                self.transport.write(_TOO_LARGE % (len(message), message))
                self.transport.close()

    return BoundedHttpToolsProtocol


class MaskedAccessLog(logging.Filter):
    """A filter for uvicorn's access log (``uvicorn.access``): the request target's
    secret query parameters masked. The presigned URLs of ``fs`` and ``memory`` are served
    here, and their ``X-VI-Signature`` grants access until the URL expires."""

    def filter(self, record: logging.LogRecord) -> bool:
        # uvicorn logs '%s - "%s %s HTTP/%s" %d' with the target third.
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str):
            record.args = (*args[:2], mask_query(args[2]), *args[3:])
        return True
