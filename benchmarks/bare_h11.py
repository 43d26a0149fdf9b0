"""Bare reference loop: generator coroutines over selectors + h11, keep-alive.

What the ``yield`` engine is measured against, in the manner of the
"500 lines or less" crawler: N generator coroutines, each owning one
keep-alive connection, take URLs from a shared deque; each ``yield``s
``(event, socket)`` when it would block and a ~20-line loop over
``selectors`` resumes it once that socket is ready.  HTTP/1.1 framing is
h11's.  No retries (except once on a keep-alive connection the server
closed), no redirects, no body cap, plain http only.

    python benchmarks/bare_h11.py URLFILE -c 64
    python benchmarks/bare_h11.py --base http://127.0.0.1:8080 --count 5000 -c 64

Prints one JSON line like the other bare loops (see bare_aiohttp.py).
"""

from __future__ import annotations

import errno
import selectors
import socket
import time
from collections import deque
from urllib.parse import urlsplit

import h11

from bare_common import arg_parser, cpu_seconds, report, urls_from

READ, WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE


# --- the scheduler -------------------------------------------------------------------


def run(tasks: list, idle_timeout: float) -> None:
    """Drive generator tasks that yield ``(READ|WRITE, sock)`` until all have returned.

    A task's socket stays registered between waits (re-registered only when
    the task moves to another socket or event), which saves two epoll_ctl
    calls per wait.  If nothing becomes ready for ``idle_timeout`` seconds,
    every waiting task gets a TimeoutError thrown in.
    """
    selector = selectors.DefaultSelector()
    waiting: dict = {}  # task -> (socket, event) registered for it

    def advance(task, exc: BaseException | None = None) -> None:
        try:
            event, sock = task.throw(exc) if exc else task.send(None)
        except Exception:  # StopIteration (done) or an error it did not handle
            old = waiting.pop(task, None)
            if old:
                selector.unregister(old[0])
            return
        old = waiting.get(task)
        if old is None:
            selector.register(sock, event, task)
        elif old[0] is not sock:  # (a closed socket is found by identity, whatever its fd became)
            selector.unregister(old[0])
            selector.register(sock, event, task)
        elif old[1] != event:
            selector.modify(sock, event, task)
        waiting[task] = (sock, event)

    for task in tasks:
        advance(task)
    while waiting:
        events = selector.select(idle_timeout)
        if not events:
            for task in list(waiting):
                advance(task, TimeoutError("no progress"))
            continue
        for key, _ in events:
            advance(key.data)


# --- the coroutines --------------------------------------------------------------------


def connect(host: str, port: int):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    err = sock.connect_ex((host, port))
    if err not in (0, errno.EINPROGRESS):
        sock.close()
        raise OSError(err, "connect failed")
    yield WRITE, sock
    err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if err:
        sock.close()
        raise OSError(err, "connect failed")
    return sock


def exchange(sock: socket.socket, conn: h11.Connection, host: str, target: str):
    """GET target on an open connection; returns (status, body)."""
    data = conn.send(h11.Request(method="GET", target=target, headers=[("Host", host), ("User-Agent", "bare-h11"), ("Accept-Encoding", "identity")]))
    data += conn.send(h11.EndOfMessage())
    view = memoryview(data)
    while view:
        try:
            view = view[sock.send(view):]
        except BlockingIOError:
            yield WRITE, sock
    status, chunks = None, []
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            try:
                data = sock.recv(262144)
            except BlockingIOError:
                yield READ, sock
                continue
            conn.receive_data(data)
        elif type(event) is h11.Data:
            chunks.append(event.data)
        elif type(event) is h11.Response:
            status = event.status_code
        elif type(event) is h11.EndOfMessage:
            return status, b"".join(chunks)
        elif type(event) is h11.ConnectionClosed:
            raise ConnectionResetError("closed before the response")


def worker(urls: deque, counts: list[int]):
    sock = conn = None
    where = None
    while urls:
        url = urls.popleft()
        parts = urlsplit(url)
        address = (parts.hostname, parts.port or 80)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        for attempt in (1, 2):
            reused = sock is not None
            try:
                if sock is None or address != where:
                    if sock is not None:
                        sock.close()
                    sock = yield from connect(*address)
                    conn, where = h11.Connection(h11.CLIENT), address
                status, body = yield from exchange(sock, conn, parts.netloc, target)
            except (OSError, h11.ProtocolError, TimeoutError):
                if sock is not None:
                    sock.close()
                sock = conn = None
                if reused and attempt == 1:
                    continue  # the server may close an idle keep-alive connection: one more try
                counts[1] += 1
                break
            if 200 <= status < 300:
                counts[0] += 1
                counts[2] += len(body)
            else:
                counts[1] += 1
            if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
                conn.start_next_cycle()
            else:
                sock.close()
                sock = conn = None
            break
    if sock is not None:
        sock.close()


def main() -> None:
    parser = arg_parser(__doc__.splitlines()[0], timeout_help="seconds without any progress before waiting requests fail")
    args, urls = urls_from(parser)

    cpu0, t0 = cpu_seconds(), time.perf_counter()
    counts = [0, 0, 0]  # pages, errors, bytes
    queue = deque(urls)
    run([worker(queue, counts) for _ in range(args.concurrency)], args.timeout)
    seconds, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
    report("bare_h11", args, urls, *counts, seconds, cpu)


if __name__ == "__main__":
    main()
