"""The quick ways for the common URL (http_url, host_key) give what the general ways give, for every URL."""

from __future__ import annotations

import random

import pytest

from crawler.fetching import FetchError, _any_http_url, http_url

EDGES = [
    "http://example.com/", "HTTP://Example.COM/Path?Q=1", "https://a.b.c:8080/x/y?z", "http://h:0/", "http://h:65535/a",
    "http://h:65536/a", "http://h:080/a", "http://127.0.0.1:9/one", "http://h/a?", "http://h/a?b#c", "http://h/a#",
    "http://h//x", "http://h/a@b", "http://user@h/", "http://" + "a" * 63 + ".com/", "http://" + "a" * 64 + ".com/",
    "http://a..b/", "http://.a/", "http://a./", "http://-/", "http://_x.y/", "http://h/%41%zz", "http://h/a b",
    "http://h/é", "http://é.com/", "ftp://h/", "http://h", "http://h?x", "http://h:/x", "http://h:99999999/",
    "http://" + "a." * 126 + "b/", "http://" + "a." * 127 + "b/", "http://h/" + "x" * 9000,
    "Http://H/~!$&'()*+,;=:@[]", "http://h/\\x", "http://[::1]/", " http://h/", "http://h/\t",
]  # fmt: skip


def outcome(function, url: str):
    try:
        return function(url)
    except FetchError as exc:
        return ("error", exc.code)


@pytest.mark.parametrize("url", EDGES)
def test_the_quick_way_agrees_on_edges(url):
    assert outcome(http_url, url) == outcome(_any_http_url, url)


def test_the_quick_way_agrees_on_random_urls():
    rnd = random.Random(13)
    alphabet = "aZ09.-_:/?#@%é []~!"
    for _ in range(20000):
        url = rnd.choice(["http://", "https://", "HTTP://", "hTtPs://"]) + "".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, 25)))
        assert outcome(http_url, url) == outcome(_any_http_url, url), url


def test_host_key_kept_per_netloc_agrees_with_parsing_each_url():
    from crawler.urls import host_key, host_port

    def parsed(url):
        try:
            return "%s:%d" % host_port(url)
        except ValueError as exc:
            return type(exc).__name__

    def keyed(url):
        try:
            return host_key(url)
        except ValueError as exc:
            return type(exc).__name__

    rnd = random.Random(5)
    alphabet = "aZ09.-_:/?#@%é []~!\t"
    edges = ["http://H:80/", "HTTPS://h/", "http://h:0/", "http://h:99999/", "http://u:p@h:81/x", "http://[::1]:8/", "http://h", "http://h?x", "http://h#f", "ftp://h/"]
    for url in edges + [rnd.choice(["http://", "https://", "HTTP://", "ftp://", "http:/"]) + "".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, 20))) for _ in range(20000)]:
        assert keyed(url) == parsed(url), url
