"""One suite, every registered engine: the same URL must give the same record.

Engines join this suite by registering; nothing here names an engine.
"""

from __future__ import annotations

import time

import pytest
from conftest import by_url, run_records


def test_one_record_per_line_duplicates_and_invalid_lines(engine_name, server):
    urls = [
        server.url("/page/a"),
        server.url("/page/a"),  # duplicates get their own record
        "not a url",
        "ftp://example.invalid/file",
        "http://",
        "https://[::1",  # broken IPv6 literal
        "http://127.0.0.1:99999/",  # port out of range
        server.url("/page/b"),
    ]
    records = run_records(engine_name, urls)
    assert sorted(r["url"] for r in records) == sorted(urls)
    assert {r["engine"] for r in records} == {engine_name}
    for record in records:
        if "/page/" in record["url"]:
            assert record["ok"] and record["status"] == 200 and record["error"] is None
        else:
            assert record["error"] == "invalid_url" and not record["ok"]
            assert record["status"] is None and record["final_url"] is None and record["sha256"] is None


def test_http_error_statuses(engine_name, server):
    records = by_url(run_records(engine_name, [server.url("/status/404"), server.url("/status/500")], retries=0))
    for code in (404, 500):
        record = records[server.url(f"/status/{code}")]
        assert record["status"] == code
        assert record["error"] == "http_status" and not record["ok"]
        assert record["title"] is None  # error pages are not parsed
        assert record["sha256"] is not None  # but their body was received


def test_redirect_sets_final_url(engine_name, server):
    [record] = run_records(engine_name, [server.url("/redirect/3")])
    assert record["ok"] and record["status"] == 200
    assert record["url"] == server.url("/redirect/3")
    assert record["final_url"] == server.url("/page/final")
    assert record["title"] == "final"


def test_redirect_loop_is_too_many_redirects(engine_name, server):
    [record] = run_records(engine_name, [server.url("/loop")])
    assert record["error"] == "too_many_redirects"
    assert record["status"] == 302


def test_redirect_chain_of_ten_is_followed_eleven_is_not(engine_name, server):
    records = by_url(run_records(engine_name, [server.url("/redirect/10"), server.url("/redirect/11")]))
    assert records[server.url("/redirect/10")]["ok"]
    assert records[server.url("/redirect/11")]["error"] == "too_many_redirects"


def test_redirect_to_other_schemes_is_an_error_and_never_followed(engine_name, server):
    targets = ["file:///etc/passwd", "ftp://127.0.0.1/x", "http://", "javascript:alert(1)"]
    urls = [server.url(f"/redirect-to?url={t}") for t in targets]
    for record in run_records(engine_name, urls):
        assert not record["ok"] and record["error"] == "invalid_url", record
        assert record["status"] == 302


def test_refused_port_is_connect(engine_name, refused_port):
    [record] = run_records(engine_name, [f"http://127.0.0.1:{refused_port}/"], retries=0)
    assert record["error"] == "connect"
    assert record["status"] is None and record["final_url"] is None


def test_slow_response_is_timeout(engine_name, server):
    started = time.monotonic()
    [record] = run_records(engine_name, [server.url("/delay?s=3")], timeout=0.5, retries=0)
    assert record["error"] == "timeout"
    assert 400 <= record["fetch_ms"] < 2500
    assert time.monotonic() - started < 8  # not the 3 s response: start-up on a loaded machine takes the rest


def test_silent_server_is_timeout_after_every_try(engine_name, silent_port):
    # robots off: with it on, the silent robots.txt would decide (SPEC §6: the host is disallowed)
    [record] = run_records(engine_name, [f"http://127.0.0.1:{silent_port}/"], timeout=0.4, retries=1, robots=False)
    assert record["error"] == "timeout"
    assert 800 <= record["fetch_ms"] < 2500  # two tries of 0.4 s plus a short backoff


def test_dripping_body_is_bounded_by_the_whole_request_deadline(engine_name, server):
    [record] = run_records(engine_name, [server.url("/drip")], timeout=1.0, retries=0)
    assert record["error"] == "timeout"
    assert record["status"] == 200 and record["final_url"] == server.url("/drip")  # the status line did come
    assert record["fetch_ms"] < 2500


def test_503_then_200_with_one_retry(engine_name, server):
    url = server.url(f"/flaky/{engine_name}")
    [record] = run_records(engine_name, [url], retries=1)
    assert record["ok"] and record["status"] == 200 and record["title"] == "recovered"


def test_503_without_retries_is_http_status(engine_name, server):
    url = server.url(f"/flaky/{engine_name}-noretry")
    [record] = run_records(engine_name, [url], retries=0)
    assert record["status"] == 503 and record["error"] == "http_status"


def test_body_over_max_bytes_is_too_large(engine_name, server):
    records = by_url(run_records(engine_name, [server.url("/big?n=5000"), server.url("/big?n=4000")], max_bytes=4500))
    large = records[server.url("/big?n=5000")]
    assert large["error"] == "too_large" and large["status"] == 200 and not large["ok"]
    assert large["bytes"] == 0 and large["sha256"] is None and large["title"] is None
    assert records[server.url("/big?n=4000")]["ok"]


def test_gzip_bomb_is_too_large(engine_name, server):
    [record] = run_records(engine_name, [server.url("/bomb")], max_bytes=1_000_000)
    assert record["error"] == "too_large"


def test_gzip_and_deflate_are_decoded(engine_name, server):
    records = by_url(run_records(engine_name, [server.url("/gzip"), server.url("/deflate")]))
    gz = records[server.url("/gzip")]
    assert gz["ok"] and gz["title"] == "compressed" and gz["words"] == 1000
    assert gz["bytes"] > 5000  # the decoded size, not the wire size
    assert records[server.url("/deflate")]["title"] == "deflated"


def test_latin1_page_declared_by_meta_charset(engine_name, server):
    [record] = run_records(engine_name, [server.url("/latin1")])
    assert record["title"] == "café crème"


def test_image_has_null_parse_fields(engine_name, server):
    [record] = run_records(engine_name, [server.url("/image")])
    assert record["ok"] and record["content_type"].startswith("image/png")
    assert record["title"] is None and record["links"] is None and record["words"] is None and record["simhash"] is None
    assert record["sha256"] is not None and record["bytes"] == 8 + 1024


def test_chunked_response(engine_name, server):
    [record] = run_records(engine_name, [server.url("/chunked")])
    assert record["ok"] and record["title"] == "chunks" and record["words"] == 50


def test_body_shorter_than_content_length_is_protocol(engine_name, server):
    [record] = run_records(engine_name, [server.url("/truncated")], retries=0)
    assert record["error"] == "protocol" and record["status"] == 200


def test_user_agent_is_sent(engine_name, server):
    [record] = run_records(engine_name, [server.url("/user-agent")], user_agent="conformance-agent/1.0")
    assert record["ok"] and record["bytes"] == len("conformance-agent/1.0")


def test_concurrency_overlaps_waiting(engine_name, server):
    urls = [server.url(f"/delay?s=0.3&i={i}") for i in range(40)]
    started = time.monotonic()
    records = run_records(engine_name, urls, concurrency=20)
    elapsed = time.monotonic() - started
    assert all(r["ok"] for r in records) and len(records) == 40
    assert elapsed < 40 * 0.3 / 2  # sequential would take 12 s; 20 at a time about 0.6 s, plus start-up


# --- servers that break HTTP on purpose ------------------------------------------------


def test_reset_mid_body_is_protocol(engine_name, raw_server):
    [record] = run_records(engine_name, [raw_server.url("/reset-mid-body")], retries=0)
    assert record["error"] == "protocol" and record["status"] == 200 and record["bytes"] == 0


def test_invalid_chunked_framing_is_protocol(engine_name, raw_server):
    [record] = run_records(engine_name, [raw_server.url("/bad-chunked")], retries=0)
    # aiohttp parses headers and the first chunk in one go and fails before it
    # hands out the response, so its status may be unknown
    assert record["error"] == "protocol" and record["status"] in (200, None)


def test_content_length_longer_than_the_body_is_protocol(engine_name, raw_server):
    [record] = run_records(engine_name, [raw_server.url("/short-body")], retries=0)
    assert record["error"] == "protocol"


def test_corrupt_gzip_is_protocol(engine_name, raw_server):
    [record] = run_records(engine_name, [raw_server.url("/bad-gzip")], retries=0)
    assert record["error"] == "protocol" and record["status"] == 200


def test_garbage_instead_of_a_status_line_is_protocol(engine_name, raw_server):
    [record] = run_records(engine_name, [raw_server.url("/garbage-status")], retries=0)
    assert record["error"] == "protocol" and record["status"] is None


def test_connection_closed_before_the_status_line_is_connect(engine_name, raw_server):
    [record] = run_records(engine_name, [raw_server.url("/close-before-status")], retries=0)
    assert record["error"] == "connect" and record["status"] is None


@pytest.mark.parametrize("path", ["/headers-then-stall", "/drip-headers"])
def test_stalls_and_drips_end_at_the_deadline(engine_name, raw_server, path):
    started = time.monotonic()
    [record] = run_records(engine_name, [raw_server.url(path)], timeout=1.0, retries=1)
    assert record["error"] == "timeout", record
    assert 1800 <= record["fetch_ms"] < 3500  # two tries of 1 s, a short backoff, a little slack
    assert time.monotonic() - started < 10  # the record's own time is the bound; this only catches a hang


def test_hostile_url_lines_each_get_a_record(engine_name, server):
    port = server.port
    lines = [
        f"http://127.0.0.1:{port}/page/frag#section",
        f"http://user:secret@127.0.0.1:{port}/page/userinfo",
        f"http://[::1]:{port}/page/v6",  # the test server listens on IPv4 only: connect error, not a crash
        f"http://127.0.0.1:{port}/page/caf\u00e9 \ufffd",  # non-ASCII and a space in the path
        "http://" + "a" * 100_000 + ".test/",  # a label too long to encode: refused before any lookup
        "\ufffd\ufffd not a url",
    ]  # no names to resolve: a lookup would leave the machine
    records = run_records(engine_name, lines, retries=0, timeout=2)
    assert sorted(r["url"] for r in records) == sorted(lines)
    got = by_url(records)
    assert got[lines[0]]["ok"] and got[lines[0]]["final_url"] == f"http://127.0.0.1:{port}/page/frag"
    assert got[lines[1]]["ok"]
    assert got[lines[2]]["error"] == "connect"
    assert got[lines[3]]["ok"] and got[lines[3]]["title"] == "café \ufffd"
    assert got[lines[4]]["error"] == "invalid_url"
    assert got[lines[5]]["error"] == "invalid_url"


def test_retry_after_is_honoured(engine_name, server):
    url = server.url(f"/retry-after/{engine_name}")
    started = time.monotonic()
    [record] = run_records(engine_name, [url], retries=1)
    assert record["ok"] and record["title"] == "patience"
    assert time.monotonic() - started >= 0.95  # the server asked for 1 s
