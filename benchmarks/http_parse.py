"""Cost of our HTTP/1.1 parsing, in-process: ``python -m benchmarks.http_parse``.

Both parsers sit on llhttp (through httptools) and add our rules: the limits, the framing checks,
keep-alive, and reading the fields into a mapping. The raw baseline of the same run is llhttp
alone with callbacks that do nothing, so the ratio is what our layer costs on top of it:

- an app's typical answer (``ResponseParser.feed``), the same head on every answer of a
  connection, as an app sends it (the same bytes every time, so after the first one the parser
  only compares them with the last answer's);
- answers whose head changes each time (an ``x-request-id`` per answer), so nothing read for
  the previous answer applies;
- a publish request head (``parse_request_head``), as an app sends it to the publish API.

Each figure is the best of several passes after a warm-up pass, in us per message.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import httptools

from proxy.httpserver import parse_request_head
from proxy.upstream.response import ResponseParser

TYPICAL = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n"
    b"date: Fri, 04 Dec 2026 03:00:00 GMT\r\nserver: uvicorn\r\n\r\n{}"
)
PUBLISH = (
    b"POST /v1/publish/payments HTTP/1.1\r\nhost: 127.0.0.1:14001\r\nuser-agent: python-requests/2.31\r\n"
    b"accept: */*\r\ncontent-type: application/json\r\ncontent-length: 13\r\nkafka-key: order-7\r\n"
    b"ktp-delivery: 4f1c2a9e-7b6d-4c1e-9a0f-3d2b1c0e9f8a\r\n"
    b"traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\nbaggage: tenant=123,other=x"
)


def changing(i: int) -> bytes:
    """An answer whose head differs from the previous one's."""
    return (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\nx-request-id: %032x\r\n"
        b"date: Fri, 04 Dec 2026 03:00:00 GMT\r\n\r\n{}" % i
    )


class _Nothing:
    """llhttp's callbacks, doing nothing: the raw baseline."""

    def on_message_begin(self) -> None: ...

    def on_url(self, url: bytes) -> None: ...

    def on_header(self, name: bytes, value: bytes) -> None: ...

    def on_headers_complete(self) -> None: ...

    def on_body(self, body: bytes) -> None: ...

    def on_message_complete(self) -> None: ...


def best_us(messages: list[bytes], parse: Callable[[bytes], object], passes: int) -> float:
    """Best pass, in us per message, after a warm-up pass."""
    best = float("inf")
    for attempt in range(passes + 1):
        started = time.perf_counter()
        for message in messages:
            parse(message)
        if attempt:
            best = min(best, (time.perf_counter() - started) / len(messages))
    return best * 1e6


def run(count: int, passes: int) -> list[tuple[str, float, float]]:
    """(case, ours in us, llhttp alone in us) for each case."""
    raw_response = httptools.HttpResponseParser(_Nothing())
    ours = ResponseParser()
    same = [TYPICAL] * count
    different = [changing(i) for i in range(count)]
    requests = [PUBLISH] * count

    def raw_request(head: bytes) -> None:
        httptools.HttpRequestParser(_Nothing()).feed_data(head + b"\r\n\r\n")

    return [
        ("typical answer", best_us(same, ours.feed, passes), best_us(same, raw_response.feed_data, passes)),
        ("answer, head changes", best_us(different, ours.feed, passes),
         best_us(different, raw_response.feed_data, passes)),
        ("publish request head", best_us(requests, parse_request_head, passes), best_us(requests, raw_request, passes)),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.http_parse", description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=20_000, help="messages per pass")
    parser.add_argument("--passes", type=int, default=5, help="timed passes, best kept")
    args = parser.parse_args()
    print(f"{'case':<24} {'ours':>9} {'llhttp alone':>13} {'ratio':>7}")
    for case, ours, raw in run(args.count, args.passes):
        print(f"{case:<24} {ours:>7.2f}us {raw:>11.2f}us {ours / raw:>6.2f}x")


if __name__ == "__main__":
    main()
