"""The shared policy without sockets, and the fetch → parse pipeline with a scripted engine."""

from __future__ import annotations

import gzip
import random
import time
import zlib

import pytest

import crawler
from crawler.fetching import BodyDecoder, FetchError, Response, Sleep, fetch_plan, http_url
from crawler.outputs import RECORD_KEYS
from crawler.pipeline import RunOptions, make_record, run_engine
from crawler.stats import LatencyHistogram

SETTINGS = crawler.Settings(retries=2, backoff_base=0.01)


def drive(url: str, answers: list, settings=SETTINGS):
    """Run the policy against scripted answers; return (result, exchanged URLs, sleeps)."""
    plan = fetch_plan(url, settings)
    exchanged, sleeps = [], []
    try:
        step = next(plan)
        while True:
            if isinstance(step, Sleep):
                sleeps.append(step.seconds)
                step = plan.send(None)
                continue
            exchanged.append(step.url)
            answer = answers.pop(0)
            step = plan.throw(answer) if isinstance(answer, FetchError) else plan.send(answer)
    except StopIteration as done:
        return done.value, exchanged, sleeps


def html(status=200, **headers):
    return Response(status, {"content-type": "text/html", **headers}, b"<title>t</title>")


def test_policy_follows_relative_and_absolute_redirects():
    result, exchanged, _ = drive(
        "http://a.test/start",
        [html(301, location="/next"), html(302, location="https://b.test/x?y=1#frag"), html(200)],
    )
    assert exchanged == ["http://a.test/start", "http://a.test/next", "https://b.test/x?y=1"]
    assert result.ok and result.final_url == "https://b.test/x?y=1" and result.url == "http://a.test/start"


def test_policy_retries_connection_errors_and_503_with_growing_backoff():
    result, exchanged, sleeps = drive("http://a.test/", [FetchError("connect", "refused"), html(503), html(200)])
    assert result.ok and len(exchanged) == 3
    assert len(sleeps) == 2 and sleeps[1] > sleeps[0] * 0.9 / 2


def test_policy_gives_up_after_the_retries():
    result, exchanged, _ = drive("http://a.test/", [FetchError("timeout")] * 3)
    assert result.error == "timeout" and len(exchanged) == 3 and result.status is None


def test_policy_does_not_retry_404_or_protocol_errors():
    assert drive("http://a.test/", [html(404)])[0].error == "http_status"
    result, exchanged, _ = drive("http://a.test/", [FetchError("protocol", response=Response(200, {}))])
    assert result.error == "protocol" and result.status == 200 and len(exchanged) == 1


@pytest.mark.parametrize(
    "raw, wire",
    [
        ("HTTP://EXAMPLE.test/a b", "http://example.test/a%20b"),
        ("http://bücher.test/straße", "http://xn--bcher-kva.test/stra%C3%9Fe"),
        ("http://[::1]:8080/x#frag", "http://[::1]:8080/x"),
        ("https://user:pw@host.test", "https://user:pw@host.test/"),
    ],
)
def test_urls_are_made_ready_for_the_wire(raw, wire):
    assert http_url(raw) == wire


@pytest.mark.parametrize("bad", ["", "example.com", "mailto:a@b.test", "http://", "http://a.test:http/", "http://a\x00.test/"])
def test_invalid_urls(bad):
    with pytest.raises(FetchError) as info:
        http_url(bad)
    assert info.value.code == "invalid_url"


@pytest.mark.parametrize(
    "encoding, encode",
    [("gzip", gzip.compress), ("deflate", zlib.compress), ("deflate", lambda b: _raw_deflate(b))],
)
def test_body_decoder_streams_compressed_bodies(encoding, encode):
    body = b"hello streaming world " * 1000
    wire = encode(body)
    decoder = BodyDecoder(encoding, max_bytes=len(body))
    for i in range(0, len(wire), 7):
        decoder.feed(wire[i : i + 7])
    assert decoder.finish() == body


def _raw_deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=-15)
    return compressor.compress(data) + compressor.flush()


def test_body_decoder_stops_a_bomb_without_inflating_it():
    bomb = gzip.compress(b"\0" * 50_000_000)
    decoder = BodyDecoder("gzip", max_bytes=1000)
    with pytest.raises(FetchError) as info:
        decoder.feed(bomb)
    assert info.value.code == "too_large" and decoder.size <= 1001


def test_body_decoder_rejects_corrupt_data():
    with pytest.raises(FetchError) as info:
        BodyDecoder("gzip", 10_000).feed(b"definitely not gzip")
    assert info.value.code == "protocol"


def test_latency_percentiles_within_one_percent():
    values = [random.lognormvariate(3, 1) for _ in range(20_000)]
    histogram = LatencyHistogram()
    for value in values:
        histogram.add(value)
    ordered = sorted(values)
    for p in (50, 95, 99):
        exact = ordered[int(len(ordered) * p / 100) - 1]
        assert histogram.percentile(p) == pytest.approx(exact, rel=0.02)
    assert histogram.max == max(values)


def test_record_keys_and_parse_failure():
    result = crawler.FetchResult("http://a.test/", status=200, body=b"<p>x", headers={"content-type": "text/html"}, final_url="http://a.test/")
    record = make_record("e", result, parse_error="ValueError: boom")
    assert tuple(record) == RECORD_KEYS
    assert record["error"] == "parse" and not record["ok"] and record["detail"] == "ValueError: boom"
    assert record["sha256"] is not None and record["depth"] == 0 and record["parent"] is None


class ScriptedEngine:
    """Yields ready-made pages at a set pace: the pipeline under test, not a network."""

    name = "scripted"
    description = "test double"

    def __init__(self, pages: int, size: int, pace: float):
        self.pages, self.size, self.pace = pages, size, pace
        self.yielded = 0
        self.last_yield_at = 0.0

    def fetch(self, urls, settings):
        filler = "<p>" + "word " * (self.size // 5) + "</p>"
        for url in urls:
            time.sleep(self.pace)
            self.yielded += 1
            self.last_yield_at = time.monotonic()
            body = f"<html><title>{url}</title><body>{filler}</body></html>".encode()
            yield crawler.FetchResult(url, status=200, body=body, headers={"content-type": "text/html"}, final_url=url)


def test_pages_are_parsed_while_fetching_goes_on():
    engine = ScriptedEngine(pages=30, size=2000, pace=0.03)
    fetched_when_written = []  # pages the engine had yielded when each record was written

    def write(record):
        assert record["title"] is not None
        fetched_when_written.append(engine.yielded)

    urls = [f"http://a.test/{i}" for i in range(30)]
    stats = run_engine(engine, urls, crawler.Settings(), RunOptions(parse_workers=1, batch_size=4), write)
    assert len(fetched_when_written) == 30 and stats.ok == 30
    # The first records long before the last fetch: counted in pages, not seconds, so that
    # a loaded machine, slowing both sides, does not change the answer.
    assert fetched_when_written[0] <= 20
    assert stats.parse_cpu_s > 0


def test_a_full_parse_stage_holds_the_engine_back():
    engine = ScriptedEngine(pages=80, size=200_000, pace=0)
    outstanding = []

    def write(record):
        outstanding.append(engine.yielded - len(outstanding) - 1)

    urls = [f"http://a.test/{i}" for i in range(80)]
    options = RunOptions(parse_workers=1, batch_size=2, parse_bytes_in_flight=1_000_000)
    run_engine(engine, urls, crawler.Settings(), options, write)
    assert len(outstanding) == 80
    # about 1 MB of 200 KB pages in flight, plus a batch being filled: never the whole list
    assert max(outstanding) <= 10


def test_inline_parsing_when_no_workers():
    engine = ScriptedEngine(pages=3, size=100, pace=0)
    records = []
    stats = run_engine(engine, ["http://a.test/1", "http://a.test/2"], crawler.Settings(), RunOptions(parse_workers=0), records.append)
    assert [r["title"] for r in records] == ["http://a.test/1", "http://a.test/2"]
    assert stats.parse_cpu_s > 0


def test_no_parse_leaves_parse_fields_null_but_hashes_the_body():
    engine = ScriptedEngine(pages=2, size=100, pace=0)
    records = []
    run_engine(engine, ["http://a.test/1"], crawler.Settings(), RunOptions(parse=False), records.append)
    [record] = records
    assert record["ok"] and record["title"] is None and record["words"] is None and record["sha256"]


def test_retry_after_in_seconds_and_as_an_http_date_is_waited_for():
    import email.utils

    soon = email.utils.formatdate(time.time() + 3, usegmt=True)
    result, exchanged, sleeps = drive("http://a.test/", [html(429, **{"retry-after": "2"}), html(503, **{"retry-after": soon}), html(200)])
    assert result.ok and len(exchanged) == 3
    assert sleeps[0] == 2.0 and 1.5 < sleeps[1] <= 3.0


def test_retry_after_beyond_the_cap_is_not_waited_for():
    result, exchanged, sleeps = drive("http://a.test/", [html(503, **{"retry-after": "3600"})])
    assert result.error == "http_status" and result.status == 503 and sleeps == []


def test_429_without_retry_after_backs_off_exponentially():
    result, _, sleeps = drive("http://a.test/", [html(429), html(429), html(200)])
    assert result.ok and len(sleeps) == 2 and all(s > 0 for s in sleeps)


class _HintProbe:
    """Records what operator.length_hint says of its URLs, before and after taking one."""

    name, description, options = "hint-probe", "records length hints", {}

    def __init__(self):
        self.hints = []

    def fetch(self, urls, settings):
        import operator

        self.hints.append(operator.length_hint(urls, -1))
        for url in urls:
            self.hints.append(operator.length_hint(urls, -1))
            yield crawler.FetchResult(url=url, error="other")


def test_engines_are_told_how_many_urls_are_left_when_it_is_known():
    from crawler.pipeline import EngineRun, sized

    urls = [f"http://a.test/{i}" for i in range(4)]
    known = _HintProbe()
    assert len(list(EngineRun(known, sized((u for u in urls), 4), crawler.Settings(), RunOptions(parse=False)))) == 4
    assert known.hints == [4, 3, 2, 1, 0]  # pool starts min(concurrency, URLs) processes by it
    unknown = _HintProbe()
    list(EngineRun(unknown, (u for u in urls), crawler.Settings(), RunOptions(parse=False)))
    assert unknown.hints == [-1] * 5  # a generator: nothing is claimed
