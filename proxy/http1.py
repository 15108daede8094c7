"""HTTP/1.1 rules shared by our server (:mod:`proxy.httpserver`) and our client's response
parser (:mod:`proxy.upstream.response`). Both parse with llhttp (through httptools); this module
holds what we add on top of it, so the two sides cannot drift apart: the limits both enforce,
the statuses without a body, the reading of list-valued fields, and the check of the heads we
write ourselves."""

from __future__ import annotations

import re

# A head (request or response line, headers, or trailers) larger than this is refused. llhttp
# has no limit of its own: it would buffer an unfinished field for ever.
MAX_HEAD_BYTES = 64 * 1024
# More header fields than this are refused (what Python's http.client allows): a 64 KiB head of
# empty fields would otherwise cost thousands of callbacks and dictionary entries.
MAX_HEADER_FIELDS = 100
# A chunk-size line (size and extensions) longer than this is refused.
MAX_CHUNK_LINE = 1024
# RFC 9110 section 8.6: these statuses never carry a body.
NO_BODY_STATUSES = frozenset({204, 304})

# Controls other than HTAB, and CR or LF that are not a CRLF pair: never in a valid head (checked
# on the heads we write, and on trailers we read ourselves).
BAD_HEAD_BYTES = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]|\r(?!\n)|(?<!\r)\n")


def tokens(value: str) -> list[str]:
    """A comma-separated field value (``Connection``, ``Transfer-Encoding``) as lower-case items."""
    return [item.strip(" \t").lower() for item in value.split(",")]

