"""HTTP/1.1 grammar shared by our server (:mod:`proxy.httpserver`) and our client's response
parser (:mod:`proxy.upstream.response`): one definition of what a valid head looks like and of
the limits both sides enforce, so the two cannot drift apart."""

from __future__ import annotations

import re

# A head (request or response line, headers, or trailers) larger than this is refused.
MAX_HEAD_BYTES = 64 * 1024
# A chunk-size line (size and extensions) longer than this is refused.
MAX_CHUNK_LINE = 1024
# RFC 9110 section 8.6: these statuses never carry a body.
NO_BODY_STATUSES = frozenset({204, 304})

# RFC 9110 token: methods and field names.
TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# Controls other than HTAB, and CR or LF that are not a CRLF pair: never in a valid head.
BAD_HEAD_BYTES = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]|\r(?!\n)|(?<!\r)\n")
