"""The parse stage under faults: workers that die, pages that hang."""

from __future__ import annotations

import threading

import crawler
from crawler.parse_stage import ParseStage
from parse_faults import CRASH, DEAF, HANG, parse_batch_with_faults, parse_batch_with_hangs


def page(i: int, marker: bytes = b"") -> crawler.FetchResult:
    body = b"<html><title>p%d</title><body>some words here</body>%s</html>" % (i, marker)
    return crawler.FetchResult(f"http://a.test/{i}", status=200, body=body, headers={"content-type": "text/html"})


def run_stage(pages, **kwargs):
    outcomes, lock = {}, threading.Lock()

    def done(result, parsed, error):
        with lock:
            assert result.url not in outcomes, "delivered twice"
            outcomes[result.url] = (parsed, error)

    kwargs.setdefault("batch_size", 8)
    stage = ParseStage(workers=2, done=done, bytes_in_flight=10_000_000, **kwargs)
    stage.start()
    try:
        for result in pages:
            stage.submit(result)
        stage.drain()
    finally:
        stage.close()
    return outcomes, stage


def test_a_worker_killed_by_a_page_costs_only_that_page():
    pages = [page(i, CRASH if i == 13 else b"") for i in range(40)]
    outcomes, stage = run_stage(pages, parse_batch=parse_batch_with_faults, timeout=5)
    assert len(outcomes) == 40
    parsed, error = outcomes["http://a.test/13"]
    assert parsed is None and "died" in error
    for i in range(40):
        if i != 13:
            parsed, error = outcomes[f"http://a.test/{i}"]
            assert error is None and parsed["title"] == f"p{i}"
    assert stage.restarts >= 1


def test_a_hanging_page_is_stopped_by_the_parse_timeout():
    pages = [page(i, HANG if i == 3 else b"") for i in range(12)]
    outcomes, _ = run_stage(pages, parse_batch=parse_batch_with_hangs, timeout=0.5)
    assert len(outcomes) == 12
    parsed, error = outcomes["http://a.test/3"]
    assert parsed is None and "timed out" in error
    assert all(outcomes[f"http://a.test/{i}"][1] is None for i in range(12) if i != 3)


def test_a_page_stuck_beyond_signals_is_killed_by_the_watchdog():
    pages = [page(i, DEAF if i == 2 else b"") for i in range(6)]
    # ordinary pages parse in milliseconds: 1 s leaves them room on a loaded machine
    outcomes, stage = run_stage(pages, parse_batch=parse_batch_with_hangs, timeout=1.0, batch_size=2)
    assert len(outcomes) == 6
    parsed, error = outcomes["http://a.test/2"]
    assert parsed is None and "timed out" in error
    assert [(i, outcomes[f"http://a.test/{i}"][1]) for i in range(6) if i != 2 and outcomes[f"http://a.test/{i}"][1] is not None] == []
    assert stage.restarts >= 1


def test_hostile_pages_end_as_records_without_stalling_the_stage():
    deep = crawler.FetchResult(
        "http://a.test/deep", status=200, headers={"content-type": "text/html"},
        body=b"<html><body>" + b"<div>" * 300_000 + b"x",  # lexbor's time grows with the square of the depth
    )  # fmt: skip
    garbage = crawler.FetchResult("http://a.test/garbage", status=200, body=bytes(range(256)) * 4000, headers={"content-type": "text/html"})
    codec = crawler.FetchResult(
        "http://a.test/codec", status=200, headers={"content-type": "text/html"},
        body=b'<meta charset="x-no-such-codec"><title>caf\xc3\xa9</title>',
    )  # fmt: skip
    # the deep page takes minutes; the others milliseconds, or a second or two on a loaded machine
    outcomes, _ = run_stage([deep, garbage, codec] + [page(i) for i in range(10)], timeout=4.0)
    assert len(outcomes) == 13
    assert "timed out" in outcomes["http://a.test/deep"][1]
    assert outcomes["http://a.test/garbage"][1] is None
    assert outcomes["http://a.test/codec"][0]["title"] == "café"
    assert all(outcomes[f"http://a.test/{i}"][1] is None for i in range(10))
