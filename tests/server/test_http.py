"""The gateway's own HTTP server (serving.server.http) on a real socket."""

from __future__ import annotations

import ipaddress
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import psutil

from serving.server.sockets import listen

from .conftest import (
    Served,
    cycles_made_by,
    ingress_refusals,
    places_taken,
    post_head,
    serve,
    shed_all,
)


def digits(rows: int = 1) -> np.ndarray:
    return np.random.default_rng(rows).random((rows, 64), dtype=np.float32)


def infer_body(x: np.ndarray) -> dict:
    return {"inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape),
                        "data": x.ravel().tolist()}]}


def headers_only(address: str, path: str, headers: dict[str, str], length: int) -> bytes:
    """Send a POST's head with a ``Content-Length`` but none of its body; return what the
    server answers within 2 s (nothing if it waits for the body)."""
    host, port = address.split(":")
    with socket.create_connection((host, int(port)), timeout=2) as sock:
        sock.sendall(post_head(address, path, headers, length))
        return read_answer(sock)


def read_answer(sock: socket.socket) -> bytes:
    """One whole answer with a Content-Length, or what came before the socket's timeout."""
    answer = b""
    try:
        while True:
            answer += sock.recv(65536)
            top, _, body = answer.partition(b"\r\n\r\n")
            lengths = [int(line.split(b":")[1]) for line in top.lower().splitlines()
                       if line.startswith(b"content-length:")]
            if lengths and len(body) >= lengths[0]:
                return answer
    except TimeoutError:
        return answer


def hold_one_request(served: Served, target: str, **headers: str) -> threading.Thread:
    """Start a request whose batch stays in flight until ``served.workers.gate`` is set."""
    served.workers.gate.clear()
    calls = served.workers.calls
    thread = threading.Thread(target=httpx.post, args=(target,),
                              kwargs={"json": infer_body(digits()), "headers": headers,
                                      "timeout": 10})
    thread.start()
    deadline = time.monotonic() + 5
    while served.workers.calls == calls and time.monotonic() < deadline:
        time.sleep(0.005)
    assert served.workers.calls > calls, "the held request never reached the worker"
    return thread


def test_infer_and_health_over_a_real_socket(served: Served) -> None:
    x = digits(3)
    response = httpx.post(f"http://{served.http}/v2/models/digits/infer", json=infer_body(x))
    assert response.status_code == 200, response.text
    expected = served.workers.workers["digits"].runtime.infer({"input": x})
    got = {o["name"]: np.array(o["data"]).reshape(o["shape"]) for o in response.json()["outputs"]}
    np.testing.assert_allclose(got["probabilities"], expected["probabilities"], rtol=1e-5)
    assert httpx.get(f"http://{served.http}/v2/health/ready").json() == {"ready": True}
    assert httpx.get(f"http://{served.http}/v2/models/nope").status_code == 404


def test_a_request_over_the_in_flight_cap_is_refused_before_its_body(capped: Served) -> None:
    target = f"http://{capped.http}/v2/models/digits/infer"
    counted = ingress_refusals("http", "in_flight_cap")
    held = hold_one_request(capped, target)
    try:
        start = time.monotonic()
        answer = headers_only(capped.http, "/v2/models/digits/infer", {}, 10_000)
        took = time.monotonic() - start
    finally:
        capped.workers.gate.set()
        held.join(10)
    assert answer.startswith(b"HTTP/1.1 503"), answer[:200]
    assert b"retry-after: 1" in answer.lower()
    assert b"gateway_max_ongoing_requests" in answer
    assert took < 0.5
    assert capped.ingress.cap.refused == 1
    assert ingress_refusals("http", "in_flight_cap") == counted + 1


def test_the_last_places_under_the_cap_are_kept_for_the_most_important_class(
        reserved: Served) -> None:
    """Three of four places taken by ``batch`` requests: the next ``standard`` one is refused
    at once, naming the reserve; a ``realtime`` one and a health check still get in."""
    target = f"http://{reserved.http}/v2/models/digits/infer"
    with places_taken(reserved, 3, "batch"):
        refused = headers_only(reserved.http, "/v2/models/digits/infer",
                               {"x-slo-class": "standard"}, 10_000)
        realtime = httpx.post(target, json=infer_body(digits()),
                              headers={"x-slo-class": "realtime"}, timeout=5)
        ready = httpx.get(f"http://{reserved.http}/v2/health/ready", timeout=5)
    assert refused.startswith(b"HTTP/1.1 503"), refused[:200]
    assert b"kept for its most important class" in refused
    assert realtime.status_code == 200, realtime.text
    assert ready.status_code == 200, ready.text


def test_a_connection_over_the_limit_is_answered_503_and_closed(
        model_repository: Path) -> None:
    """With ``max_connections`` open, the next connection gets a 503 naming the limit
    without sending anything, then EOF; it is counted; the open ones keep serving."""
    limited = serve(model_repository, max_connections=2)
    served = next(limited)
    try:
        host, port = served.http.split(":")
        counted = ingress_refusals("http", "connections")
        with httpx.Client() as first, httpx.Client() as second:
            target = f"http://{served.http}/v2/health/ready"
            assert first.get(target).status_code == 200
            assert second.get(target).status_code == 200
            with socket.create_connection((host, int(port)), timeout=5) as third:
                answer = b""
                while chunk := third.recv(65536):  # until the server closes it
                    answer += chunk
            assert first.get(target).status_code == 200
        assert answer.startswith(b"HTTP/1.1 503"), answer[:200]
        assert b"gateway_max_connections" in answer
        assert b"retry-after: 1" in answer.lower()
        assert ingress_refusals("http", "connections") == counted + 1
    finally:
        limited.close()


def test_a_class_that_cannot_be_met_is_refused_from_its_headers(served: Served) -> None:
    """The x-slo-class header names realtime (50 ms); with a 200 ms batch in flight the
    prediction is past the deadline: 503 without the body ever being sent."""
    target = f"http://{served.http}/v2/models/digits/infer"
    held = hold_one_request(served, target, **{"x-slo-class": "batch"})
    try:
        answer = headers_only(served.http, "/v2/models/digits/infer",
                              {"x-slo-class": "realtime"}, 10_000)
        # Without the header the class is unknown until the body is read: no early answer.
        silent = headers_only(served.http, "/v2/models/digits/infer", {}, 10_000)
    finally:
        served.workers.gate.set()
        held.join(10)
    assert answer.startswith(b"HTTP/1.1 503"), answer[:200]
    assert b"SLO class 'realtime' cannot be met" in answer
    assert b"retry-after" in answer.lower()
    assert silent == b""


def test_a_refused_connection_stays_usable(served: Served) -> None:
    """After an early 503 the connection (keep-alive) still serves the next request."""
    target = f"http://{served.http}/v2/models/digits/infer"
    with httpx.Client() as client:
        held = hold_one_request(served, target, **{"x-slo-class": "batch"})
        try:
            refused = client.post(target, json=infer_body(digits()),
                                  headers={"x-slo-class": "realtime"})
        finally:
            served.workers.gate.set()
            held.join(10)
        assert refused.status_code == 503
        assert client.post(target, json=infer_body(digits())).status_code == 200


def infer_request(address: str, headers: dict[str, str] | None = None) -> bytes:
    """A whole one-row infer request, head and body."""
    body = json.dumps(infer_body(digits())).encode()
    return post_head(address, "/v2/models/digits/infer", headers or {}, len(body)) + body


@contextmanager
def answers_on_one_connection(served: Served, request: bytes, status: bytes
                              ) -> Iterator[Callable[[int], None]]:
    """``send(count)``: ``request`` ``count`` times on one kept-alive connection (closed on
    leaving), each answered ``status``."""
    host, port = served.http.split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        def send(count: int = 200) -> None:
            for _ in range(count):
                sock.sendall(request)
                answer = read_answer(sock)
                assert answer.startswith(b"HTTP/1.1 " + status), answer[:200]

        yield send


# Regression tests: each of these made cycles that only the cyclic GC frees (its full
# collections then took 8-30 ms of the replica's event loop under a flood).
def test_refusals_leave_no_garbage_for_the_cyclic_gc(served: Served) -> None:
    """An early 503 kept its exception's traceback: a cycle through the server's frames,
    20 objects a refusal. (Raw sockets here: httpx makes cycles of its own.)"""
    shed_all(served, "realtime")
    request = infer_request(served.http, {"x-slo-class": "realtime"})
    with answers_on_one_connection(served, request, b"503") as send:
        send(1)  # the connection is open
        assert cycles_made_by(send) < 200


def test_failed_requests_leave_no_garbage_for_the_cyclic_gc(served: Served) -> None:
    """An error raised through a queue entry's future: the future held the error, whose
    traceback held the frames that held the future."""
    # The batch class: this test's collections hold up the server's loop, which a tighter
    # class would take as a reason to refuse.
    request = infer_request(served.http, {"x-slo-class": "batch"})
    served.workers.failing = True
    with answers_on_one_connection(served, request, b"500") as send:
        send(1)
        assert cycles_made_by(send) < 200


def test_closed_connections_leave_no_garbage_for_the_cyclic_gc(served: Served) -> None:
    """A connection's parser and keep-alive timer call back into its protocol: a cycle
    left behind by every closed connection."""
    request = infer_request(served.http, {"x-slo-class": "batch"})  # as above
    host, port = served.http.split(":")
    connections = served.ingress.http.connections

    def connect(count: int = 100) -> None:
        for _ in range(count):
            with socket.create_connection((host, int(port)), timeout=5) as sock:
                sock.sendall(request)
                assert read_answer(sock).startswith(b"HTTP/1.1 200")
        deadline = time.monotonic() + 5
        while connections and time.monotonic() < deadline:  # the server saw them close
            time.sleep(0.01)
        assert not connections

    connect(1)
    assert cycles_made_by(connect) < 100


def test_two_servers_side_by_side_and_replicas_sharing_a_port(model_repository: Path) -> None:
    first = serve(model_repository)
    second = serve(model_repository)
    a, b = next(first), next(second)
    try:
        assert a.http != b.http
        for server in (a, b):
            assert httpx.get(f"http://{server.http}/v2/health/live").json() == {"live": True}
        # A second replica of one gateway binds the same port (SO_REUSEPORT).
        port = int(a.http.split(":")[1])
        shared = listen("127.0.0.1", port)
        shared.close()
    finally:
        for generator in (first, second):
            generator.close()


def test_nothing_listens_on_all_interfaces(served: Served) -> None:
    process = psutil.Process()
    connections = getattr(process, "net_connections", process.connections)  # psutil < 6
    listening = [c.laddr for c in connections("tcp") if c.status == psutil.CONN_LISTEN]
    ours = {int(served.http.split(":")[1]), int(served.grpc.split(":")[1])}
    assert {a.port for a in listening} >= ours
    # gRPC listens on an IPv6 socket: 127.0.0.1 shows as ::ffff:127.0.0.1, still loopback.
    addresses = [ipaddress.ip_address(a.ip) for a in listening if a.port in ours]
    assert all((getattr(a, "ipv4_mapped", None) or a).is_loopback for a in addresses)


def exchange(address: str, raw: bytes, answers: int) -> list[bytes]:
    """Send ``raw`` on one connection; return the first ``answers`` whole responses."""
    host, port = address.split(":")
    out: list[bytes] = []
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(raw)
        buffer = b""
        while len(out) < answers:
            chunk = sock.recv(65536)
            if not chunk:
                break
            buffer += chunk
            while True:
                top, sep, rest = buffer.partition(b"\r\n\r\n")
                if not sep:
                    break
                lengths = [int(line.split(b":")[1]) for line in top.lower().splitlines()
                           if line.startswith(b"content-length:")]
                size = lengths[0] if lengths else 0
                if len(rest) < size:
                    break
                out.append(top + sep + rest[:size])
                buffer = rest[size:]
    return out


def post(path: str, body: bytes, *extra: str) -> bytes:
    head = [f"POST {path} HTTP/1.1", "Host: x", f"Content-Length: {len(body)}",
            "Content-Type: application/json", *extra]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def test_pipelined_requests_are_answered_in_order(served: Served) -> None:
    import json

    first = json.dumps(infer_body(digits(1))).encode()
    second = json.dumps(infer_body(digits(2))).encode()
    raw = (post("/v2/models/digits/infer", first) + b"GET /v2/health/live HTTP/1.1\r\n"
           b"Host: x\r\n\r\n" + post("/v2/models/digits/infer", second))
    answers = exchange(served.http, raw, 3)
    assert [a.split(b" ")[1] for a in answers] == [b"200", b"200", b"200"]
    bodies = [json.loads(a.partition(b"\r\n\r\n")[2]) for a in answers]
    assert bodies[0]["outputs"][0]["shape"][0] == 1
    assert bodies[1] == {"live": True}
    assert bodies[2]["outputs"][0]["shape"][0] == 2


def test_a_chunked_body_and_expect_100_continue_are_understood(served: Served) -> None:
    import json

    body = json.dumps(infer_body(digits(3))).encode()
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(part), part)
                      for part in (body[:100], body[100:])) + b"0\r\n\r\n"
    head = (b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: x\r\n"
            b"Transfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n")
    host, port = served.http.split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(head)
        assert sock.recv(1024).startswith(b"HTTP/1.1 100 Continue")  # then the body
    answers = exchange(served.http, head + chunks, 2)
    assert answers[0].startswith(b"HTTP/1.1 100 Continue")
    assert answers[1].startswith(b"HTTP/1.1 200"), answers[1][:300]


def test_a_declared_body_over_the_limit_is_refused_before_it_is_sent(served: Served) -> None:
    limit = served.ingress.http.app.max_body_bytes
    answer = headers_only(served.http, "/v2/models/digits/infer", {}, limit + 1)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert f"exceeds the {limit}-byte limit".encode() in answer


def test_malformed_http_gets_400_and_the_server_keeps_serving(served: Served) -> None:
    answers = exchange(served.http, b"NOT HTTP AT ALL\r\n\r\n", 1)
    assert answers and answers[0].startswith(b"HTTP/1.1 400"), answers
    assert b"malformed HTTP request" in answers[0]
    assert httpx.get(f"http://{served.http}/v2/health/live").json() == {"live": True}


def test_a_client_that_leaves_mid_request_gives_its_place_back(capped: Served) -> None:
    host, port = capped.http.split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(post("/v2/models/digits/infer", b"{}")[:-2] + b"")  # body cut short
        deadline = time.monotonic() + 2
        while capped.ingress.cap.in_flight == 0 and time.monotonic() < deadline:
            time.sleep(0.005)
        assert capped.ingress.cap.in_flight == 1
    deadline = time.monotonic() + 2
    while capped.ingress.cap.in_flight and time.monotonic() < deadline:
        time.sleep(0.005)
    assert capped.ingress.cap.in_flight == 0
    target = f"http://{capped.http}/v2/models/digits/infer"
    assert httpx.post(target, json=infer_body(digits())).status_code == 200


def test_each_request_is_counted_once_with_its_outcome(served: Served) -> None:
    """Regression: the early check counted every admitted request as a second ``ok``."""
    from serving.telemetry import metrics

    def count(outcome: str) -> float:
        return metrics.REQUESTS.labels("digits", "http", outcome)._value.get()

    target = f"http://{served.http}/v2/models/digits/infer"
    ok, refused = count("ok"), count("service_unavailable")
    assert httpx.post(target, json=infer_body(digits()),
                      headers={"x-slo-class": "realtime"}).status_code == 200
    held = hold_one_request(served, target, **{"x-slo-class": "batch"})
    try:
        answer = headers_only(served.http, "/v2/models/digits/infer",
                              {"x-slo-class": "realtime"}, 10_000)
    finally:
        served.workers.gate.set()
        held.join(10)
    assert answer.startswith(b"HTTP/1.1 503"), answer[:200]
    assert count("ok") == ok + 2  # the first request and the held one
    assert count("service_unavailable") == refused + 1


def health_checks_while_held(served: Served, count: int,
                             then: Callable[[], None] | None = None) -> list[socket.socket]:
    """``count`` connections, each with a health check sent, made while the server's loop
    is held; ``then`` is queued on the loop behind the hold, which is then released."""
    host, port = served.http.split(":")
    held = threading.Event()
    served.loop.call_soon_threadsafe(held.wait, 10)
    clients: list[socket.socket] = []
    try:
        for _ in range(count):
            client = socket.create_connection((host, int(port)), timeout=5)
            client.sendall(f"GET /v2/health/live HTTP/1.1\r\nHost: {served.http}\r\n\r\n"
                           .encode())
            clients.append(client)
        if then is not None:
            served.loop.call_soon_threadsafe(then)
    except BaseException:
        for client in clients:
            client.close()
        raise
    finally:
        held.set()
    return clients


def test_a_burst_of_connections_waits_for_a_busy_loop_and_is_served(served: Served) -> None:
    """Regression: ``create_server`` listened again with its default backlog of 100, so
    new connections beyond it, while the loop was busy, had their handshakes dropped and
    waited a second or more for the kernel to retry. 200 connections made while the loop
    is held are all answered soon after it is released (200, or 503 from the in-flight cap
    of 64: they all arrive in one pass of the loop)."""
    clients = health_checks_while_held(served, 200)
    released = time.monotonic()
    try:
        for client in clients:
            client.settimeout(max(0.9 - (time.monotonic() - released), 0.01))
            answer = client.recv(65536)
            assert answer[:12] in (b"HTTP/1.1 200", b"HTTP/1.1 503"), answer
    finally:
        for client in clients:
            client.close()


def test_connections_waiting_on_a_busy_loop_are_accepted_in_one_turn(served: Served) -> None:
    """Regression: uvloop accepts one connection per turn of the loop. Under load a turn
    takes milliseconds, so new connections waited in the listen backlog for seconds (2.2 s
    at 6,400 req/s), to be refused as late once accepted. 100 connections made while the
    loop is held are all answered within a few turns of a loop kept busy."""
    turns, done = [0], threading.Event()

    def turn() -> None:  # runs once per turn of the loop, each turn takes a millisecond
        turns[0] += 1
        time.sleep(0.001)
        if not done.is_set():
            served.loop.call_soon(turn)

    clients = health_checks_while_held(served, 100, then=turn)
    try:
        for client in clients:
            assert client.recv(65536)[:12] in (b"HTTP/1.1 200", b"HTTP/1.1 503")
        assert turns[0] < 20, f"100 connections took {turns[0]} turns of the loop"
    finally:
        done.set()
        for client in clients:
            client.close()
