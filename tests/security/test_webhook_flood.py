"""What a hostile sender can make ``gate serve`` spend: a body is refused past its cap before the signature
is checked (by Content-Length before anything is read, by what was read for a chunked one), and a flood of
refused deliveries earns 429s and a constant number of audit lines, not one line each. Accepted deliveries
keep one entry each."""

import asyncio
import contextlib
import json
import select
import socket
import threading
import time

import pytest
import uvicorn
from starlette.testclient import TestClient

from gate.local_server import free_port
from gate.serve.audit import AuditLog, verify_audit_log
from gate.serve.jobstore import JobStore
from gate.serve.rejections import Rejections
from gate.serve.service import WEBHOOK_PATH, Dispatcher, ServiceSettings, create_app
from gate.serve.signature import sign

SECRET = "flood-secret"
KEY = bytes(range(32))
CAP = 64 * 1024


def signed(version="1", secret=SECRET, delivery_id=None):
    body = json.dumps({"entity": "model_version", "action": "created",
                       "data": {"name": "gen", "version": version}}).encode()
    ts, did = str(int(time.time())), delivery_id or f"d-{version}-{secret}"
    return {"Content-Type": "application/json", "X-MLflow-Delivery-Id": did, "X-MLflow-Timestamp": ts,
            "X-MLflow-Signature": sign(secret, did, ts, body)}, body


@pytest.fixture
def service(tmp_path):
    settings = ServiceSettings(secret=SECRET, max_body_bytes=CAP, reject_burst=5, reject_per_s=0.01,
                               reject_window_s=3600)
    store, audit = JobStore(tmp_path / "s.sqlite"), AuditLog(tmp_path / "audit.jsonl", KEY)
    dispatcher = Dispatcher(store, audit, 1, validate=None, check_alias=None)  # never started: nothing runs
    rejections = Rejections(audit, settings.reject_burst, settings.reject_per_s, settings.reject_window_s)
    return {"app": create_app(settings, store, audit, dispatcher, rejections), "audit": audit, "store": store,
            "rejections": rejections}


@contextlib.contextmanager
def listening(app):
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started:
        assert time.time() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(10)


def send_until_answered(port, head: bytes, chunks, timeout_s=20.0):
    """Send ``head`` then ``chunks`` until the server answers; (status, bytes of body sent)."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.settimeout(timeout_s)
    sent, deadline = 0, time.time() + timeout_s
    try:
        sock.sendall(head)
        for chunk in chunks:
            if select.select([sock], [], [], 0)[0]:
                break
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(chunk)
            assert time.time() < deadline
        ready = select.select([sock], [], [], max(0.1, deadline - time.time()))[0]
        assert ready, f"no answer within {timeout_s} s after {sent} body bytes"
        status_line = sock.recv(4096).split(b"\r\n", 1)[0]
        return int(status_line.split()[1]), sent
    finally:
        sock.close()


def asgi_scope(headers: dict) -> dict:
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
            "path": WEBHOOK_PATH, "raw_path": WEBHOOK_PATH.encode(), "query_string": b"", "root_path": "",
            "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
            "client": ("203.0.113.9", 4000), "server": ("127.0.0.1", 8808)}


def request_head(headers: dict, extra: str) -> bytes:
    lines = [f"POST {WEBHOOK_PATH} HTTP/1.1", "Host: 127.0.0.1"] + [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines + [extra]) + "\r\n\r\n").encode()


def test_a_512_mb_content_length_is_refused_before_the_body_is_read(service):
    headers, _ = signed()
    with listening(service["app"]) as port:
        status, sent = send_until_answered(port, request_head(headers, f"Content-Length: {512 << 20}"),
                                           [b"x" * 65536], timeout_s=10)
    assert status == 413 and sent <= 65536  # answered with 512 MB still unsent
    [entry] = [e for e in service["audit"].entries() if e["event"] == "delivery.rejected"]
    assert entry["data"]["kind"] == "oversized" and str(CAP) in entry["data"]["reason"]


def test_a_chunked_body_without_content_length_is_cut_off_at_the_cap(service):
    headers, _ = signed()
    chunk = b"x" * 65536
    framed = (f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
    total = 64 << 20
    with listening(service["app"]) as port:
        status, sent = send_until_answered(port, request_head(headers, "Transfer-Encoding: chunked"),
                                           (framed for _ in range(total // len(chunk))))
    assert status == 413
    assert sent < total // 4, f"{sent} of {total} bytes were sent before the answer"


def test_the_handler_reads_at_most_the_cap_of_a_long_stream(service):
    """At the ASGI level, where every byte pulled is counted: a 64 MiB stream, the handler stops at the cap."""
    headers, _ = signed()
    pulled, answer, total = [0], {}, 64 << 20

    async def receive():
        pulled[0] += 8192
        return {"type": "http.request", "body": b"x" * 8192, "more_body": pulled[0] < total}

    async def send(message):
        if message["type"] == "http.response.start":
            answer["status"] = message["status"]

    scope = asgi_scope(headers)
    asyncio.run(asyncio.wait_for(service["app"](scope, receive, send), 30))
    assert answer["status"] == 413 and pulled[0] <= CAP + 8192


def test_a_flood_of_forged_deliveries_adds_a_constant_number_of_audit_lines(service):
    n = 300
    attacker = TestClient(service["app"], client=("198.51.100.7", 5000))
    mlflow = TestClient(service["app"], client=("10.0.0.2", 5000))
    statuses = [attacker.post(WEBHOOK_PATH, headers=h, content=b).status_code
                for h, b in (signed(str(i), secret="guess") for i in range(n))]
    assert statuses[:5] == [401] * 5 and set(statuses[5:]) == {429}  # the budget is 5 refusals
    late = attacker.post(WEBHOOK_PATH, headers=signed("7")[0], content=signed("7")[1])
    assert late.status_code == 429 and int(late.headers["Retry-After"]) >= 1
    # the real sender, at its own address, is heard throughout, one entry per accepted delivery
    accepted = [mlflow.post(WEBHOOK_PATH, headers=h, content=b).status_code for h, b in (signed(str(i)) for i in range(3))]
    assert accepted == [202] * 3
    service["rejections"].flush(time.time(), force=True)
    entries = service["audit"].entries()
    rejected = [e for e in entries if e["event"].startswith("delivery.rejected")]
    assert len(rejected) <= 3, [e["event"] for e in rejected]  # first signature, first 429, one summary
    [summary] = [e for e in rejected if e["event"] == "delivery.rejected.summary"]
    assert summary["data"]["total"] == n + 1
    assert summary["data"]["by_reason"] == {"signature": 5, "rate_limited": n - 4}
    assert summary["data"]["by_remote"] == {"198.51.100.7": n + 1}
    assert sum(e["event"] == "delivery.accepted" for e in entries) == 3
    verify_audit_log(service["audit"].path, KEY)


def test_the_first_refusal_of_each_kind_is_kept_in_full(service):
    client = TestClient(service["app"], client=("198.51.100.8", 5000))
    h, b = signed("1", secret="guess")
    assert client.post(WEBHOOK_PATH, headers=h, content=b).status_code == 401
    h, b = signed("2")
    stale = {**h, "X-MLflow-Timestamp": str(int(time.time()) - 3600)}
    stale["X-MLflow-Signature"] = sign(SECRET, h["X-MLflow-Delivery-Id"], stale["X-MLflow-Timestamp"], b)
    assert client.post(WEBHOOK_PATH, headers=stale, content=b).status_code == 401
    assert client.post(WEBHOOK_PATH, headers=h, content=b"x" * (CAP + 1)).status_code == 413
    kinds = [e["data"]["kind"] for e in service["audit"].entries() if e["event"] == "delivery.rejected"]
    assert kinds == ["signature", "stale", "oversized"]


def test_a_trickled_body_is_cut_off_at_the_time_limit(tmp_path):
    settings = ServiceSettings(secret=SECRET, body_timeout_s=0.5)
    store, audit = JobStore(tmp_path / "s.sqlite"), AuditLog(tmp_path / "audit.jsonl", KEY)
    app = create_app(settings, store, audit, Dispatcher(store, audit, 1, validate=None, check_alias=None))
    headers, _ = signed()
    answer = {}

    async def receive():  # one byte a second, forever
        await asyncio.sleep(1)
        return {"type": "http.request", "body": b"{", "more_body": True}

    async def send(message):
        if message["type"] == "http.response.start":
            answer["status"] = message["status"]

    scope = asgi_scope(headers)
    t0 = time.time()
    asyncio.run(asyncio.wait_for(app(scope, receive, send), 10))
    assert answer["status"] == 408 and time.time() - t0 < 5
    assert [e["data"]["kind"] for e in audit.entries()] == ["slow"]
