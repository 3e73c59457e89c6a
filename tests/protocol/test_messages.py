"""The adapter's HTTP messages from and to Starlette's (Ray Serve's proxy, the fallback)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from starlette.requests import Request

from serving.protocol.messages import HttpRequest, HttpResponse, json_response, serve_starlette


def starlette_request(path: str, headers: list[tuple[bytes, bytes]], chunks: list[bytes],
                      root_path: str = "") -> tuple[Request, list[int]]:
    """A Starlette request whose body arrives in ``chunks``; the list counts those read."""
    read = [0]

    async def receive() -> dict[str, Any]:
        read[0] += 1
        more = read[0] < len(chunks)
        return {"type": "http.request", "body": chunks[read[0] - 1], "more_body": more}

    scope = {"type": "http", "method": "POST", "path": path, "root_path": root_path,
             "headers": headers, "query_string": b""}
    return Request(scope, receive), read


def test_a_request_under_a_route_prefix_keeps_its_path_below_it_and_first_headers() -> None:
    seen: list[HttpRequest] = []

    async def handle(request: HttpRequest) -> HttpResponse:
        seen.append(request)
        return HttpResponse(201, b"{}", headers={"X-Seen": "yes"})

    request, _ = starlette_request(
        "/gateway/v2/models/digits/infer",
        [(b"x-slo-class", b"realtime"), (b"x-slo-class", b"batch"), (b"content-type", b"a/b")],
        [b"ab", b"cd"], root_path="/gateway")
    response = asyncio.run(serve_starlette(handle, request, 100))

    assert (response.status_code, response.body, response.headers["x-seen"]) == (201, b"{}", "yes")
    assert seen[0].path == "/v2/models/digits/infer"
    assert seen[0].headers == {"x-slo-class": "realtime", "content-type": "a/b"}
    assert seen[0].body == b"abcd"


def test_a_body_past_the_limit_is_answered_413_without_reading_the_rest() -> None:
    async def handle(request: HttpRequest) -> HttpResponse:
        raise AssertionError("a body over the limit reached the adapter")

    request, read = starlette_request("/v2/models/digits/infer", [], [b"x" * 60] * 5)
    response = asyncio.run(serve_starlette(handle, request, 100))

    assert response.status_code == 413
    assert "exceeds the 100-byte limit" in json.loads(response.body)["error"]
    assert read[0] == 2  # 120 bytes seen: the last three chunks were never read


def test_json_answers_are_compact_and_keep_non_finite_floats_as_python_json_does() -> None:
    response = json_response({"a": [1.5, float("nan")], "b": "é"}, 503, {"Retry-After": "1"})
    assert response.body == b'{"a":[1.5,NaN],"b":"\xc3\xa9"}'
    assert (response.status, response.content_type) == (503, "application/json")
