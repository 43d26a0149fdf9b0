"""Tests for the parse stage (crawler.parse).

Expectations are counted by hand from the small pages written here.  The
simhash is checked against ``reference_simhash``, a deliberately plain
transcription of the contract (Python ints, one loop per shingle and bit):
the numpy implementation must give the same 64 bits.
"""

from __future__ import annotations

import hashlib
import random
import re
import time

import pytest

from crawler import parse, simhash
from crawler.parse import PARSE_FIELDS, decode_html, is_html, parse_batch, parse_page, simhash_words

PAGE_URL = "http://example.com/dir/page.html"
MASK64 = (1 << 64) - 1


# --------------------------------------------------------------------------
# The simhash contract, written out plainly
# --------------------------------------------------------------------------


def _reference_word_hash(word: str) -> int:
    return int.from_bytes(hashlib.blake2b(word.encode("utf-8"), digest_size=8).digest(), "little")


def _rotl64(x: int, k: int) -> int:
    return ((x << k) | (x >> (64 - k))) & MASK64


def _splitmix64_finalize(z: int) -> int:
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def _reference_mix(a: int, b: int, c: int) -> int:
    return _splitmix64_finalize((a ^ _rotl64(b, 21) ^ _rotl64(c, 42)) & MASK64)


def reference_simhash_of_words(raw_words: list[str]) -> str:
    words = [w.lower() for w in raw_words]
    if not words:
        return "0000000000000000"
    hashes = [_reference_word_hash(w) for w in words]
    if len(hashes) < 3:
        padded = hashes + [0] * (3 - len(hashes))
        shingles = [_reference_mix(padded[0], padded[1], padded[2])]
    else:
        shingles = [_reference_mix(hashes[i], hashes[i + 1], hashes[i + 2]) for i in range(len(hashes) - 2)]
    votes = [0] * 64
    for shingle in shingles:
        for bit in range(64):
            if (shingle >> bit) & 1:
                votes[bit] += 1
            else:
                votes[bit] -= 1
    value = 0
    for bit in range(64):
        if votes[bit] > 0:
            value |= 1 << bit
    return format(value, "016x")


def reference_simhash(visible_text: str) -> str:
    return reference_simhash_of_words(re.findall(r"\w+", visible_text))


def hamming(a: str, b: str) -> int:
    return bin(int(a, 16) ^ int(b, 16)).count("1")


def html_page(body: str, head: str = "") -> bytes:
    return f"<!doctype html><html><head>{head}</head><body>{body}</body></html>".encode("utf-8")


def parse_html(body: str, head: str = "", url: str = PAGE_URL) -> dict:
    return parse_page(url, html_page(body, head), "text/html; charset=utf-8")


def random_text(seed: int, words: int, vocabulary_size: int = 2000) -> str:
    rng = random.Random(seed)
    vocabulary = [
        "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9)))
        for _ in range(vocabulary_size)
    ]
    return " ".join(rng.choice(vocabulary) for _ in range(words))


# --------------------------------------------------------------------------
# The record
# --------------------------------------------------------------------------


def test_record_has_exactly_the_parse_fields():
    record = parse_html("<p>hello</p>", "<title>t</title>")
    assert tuple(record) == PARSE_FIELDS
    assert PARSE_FIELDS == ("title", "links", "words", "simhash", "sha256")


def test_sha256_is_of_the_raw_body():
    body = html_page("<p>hello</p>")
    assert parse_page(PAGE_URL, body, "text/html")["sha256"] == hashlib.sha256(body).hexdigest()


def test_non_html_has_only_sha256():
    body = b"\x89PNG\r\n\x1a\n" + bytes(range(256))
    record = parse_page("http://example.com/logo.png", body, "image/png")
    assert record == {
        "title": None,
        "links": None,
        "words": None,
        "simhash": None,
        "sha256": hashlib.sha256(body).hexdigest(),
    }


def test_html_in_a_non_html_content_type_is_not_parsed():
    record = parse_page(PAGE_URL, html_page("<p>hello</p>", "<title>t</title>"), "text/plain")
    assert record["title"] is record["words"] is record["simhash"] is None


# --------------------------------------------------------------------------
# is_html
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    ["text/html", "text/html; charset=utf-8", "TEXT/HTML;charset=ISO-8859-1", " text/html ", "application/xhtml+xml"],
)
def test_html_content_types(content_type):
    assert is_html(content_type, b"")


@pytest.mark.parametrize("content_type", ["text/plain", "image/png", "application/json", "text/htmlx"])
def test_other_content_types(content_type):
    assert not is_html(content_type, b"<!doctype html><html></html>")


@pytest.mark.parametrize(
    "body",
    [
        b"<!doctype html><html></html>",
        b"<!DOCTYPE HTML PUBLIC '-//W3C//DTD HTML 4.01//EN'>",
        b"<html><body>x</body></html>",
        b"<HTML>",
        b"\n\t  <!DocType html>",
        b"\xef\xbb\xbf<!doctype html>",
        b"\xef\xbb\xbf  \r\n<html lang='en'>",
    ],
)
def test_sniffing_without_content_type(body):
    assert is_html(None, body)
    assert is_html("", body)


@pytest.mark.parametrize("body", [b"", b"hello <html>", b"%PDF-1.7", b"\x89PNG\r\n", b"<?xml version='1.0'?><rss/>"])
def test_sniffing_rejects_non_html(body):
    assert not is_html(None, body)


def test_sniffing_looks_at_the_first_kilobyte_only():
    assert not is_html(None, b" " * 1024 + b"<html>")
    assert is_html(None, b" " * 1000 + b"<html>")


# --------------------------------------------------------------------------
# Title
# --------------------------------------------------------------------------


def test_title_whitespace_is_collapsed():
    assert parse_html("", "<title>\n   Hello \t\n  World  \r\n</title>")["title"] == "Hello World"


def test_missing_title_is_none():
    assert parse_html("<h1>Heading, not a title</h1>")["title"] is None


def test_empty_title_is_an_empty_string():
    assert parse_html("", "<title>   </title>")["title"] == ""


def test_title_entities_are_decoded():
    title = parse_html("", "<title>Fish &amp; Chips &lt;3 caf&eacute; &#8212; &#x41;</title>")["title"]
    assert title == "Fish & Chips <3 café \u2014 A"


def test_first_title_wins():
    assert parse_html("", "<title>One</title><title>Two</title>")["title"] == "One"


# --------------------------------------------------------------------------
# Links
# --------------------------------------------------------------------------


def test_links_are_distinct_absolute_http_urls():
    body = """
        <a href="other.html">relative: /dir/other.html</a>
        <a href="other.html">the same again</a>
        <a href="other.html#section">same, but for the fragment</a>
        <a href="./other.html">same after dot-segment removal</a>
        <a href="/root">absolute path: http://example.com/root</a>
        <a href="https://example.com/root">https is a different URL</a>
        <a href="  http://other.org/x  ">surrounding whitespace stripped</a>
        <a href="#top">this page</a>
        <a href="">this page too</a>
        <a href="mailto:someone@example.com">mail</a>
        <a href="javascript:void(0)">script</a>
        <a href="tel:+15551234">phone</a>
        <a href="data:text/html,hi">data</a>
        <a href="ftp://example.com/file">ftp</a>
        <a href="http://[::1">malformed IPv6</a>
        <a name="anchor">no href at all</a>
        <link href="/style.css" rel="stylesheet">
    """
    # other.html, /root, https /root, other.org/x, the page itself
    assert parse_html(body)["links"] == 5


def test_empty_href_and_fragment_are_the_page_itself():
    assert parse_html('<a href="">a</a> <a href="#x">b</a> <a href>c</a>')["links"] == 1
    assert parse_html(f'<a href="">a</a> <a href="{PAGE_URL}">b</a>')["links"] == 1


def test_http_and_https_count_separately():
    body = '<a href="http://example.org/">a</a> <a href="https://example.org/">b</a>'
    assert parse_html(body)["links"] == 2


def test_no_links():
    assert parse_html("<p>plain</p>")["links"] == 0


def test_base_href_is_respected():
    body = '<a href="x">a</a> <a href="http://example.com/other/x">b</a> <a href="dir/page.html">c</a>'
    # Against the page URL these are three URLs; against the base, the first
    # two are the same one.
    assert parse_html(body)["links"] == 3
    assert parse_html(body, '<base href="http://example.com/other/">')["links"] == 2


def test_base_href_is_itself_relative_to_the_page():
    body = '<a href="a">a</a> <a href="/base/a">b</a> <a href="">c</a> <a href="/base/">d</a>'
    # With base /base/: "a" and "/base/a" coincide, "" and "/base/" coincide.
    assert parse_html(body, '<base href="/base/">')["links"] == 2
    assert parse_html(body)["links"] == 4


def test_malformed_hrefs_never_raise():
    body = '<a href="http://[::1">a</a> <a href="//[bad">b</a> <a href="http://ok.example/">c</a>'
    assert parse_html(body)["links"] == 1


# --------------------------------------------------------------------------
# Words
# --------------------------------------------------------------------------


def test_words_exclude_script_style_noscript_and_template():
    body = """
        <h1>Hello world</h1>
        <p>one two-three</p>
        <script>var hidden = "not counted";</script>
        <style>p { color: red }</style>
        <noscript>please enable javascript</noscript>
        <template><p>template text</p></template>
        <p>end_of it's</p>
    """
    # Hello world | one two three | end_of it s
    assert parse_html(body, "<title>Title words are not body words</title>")["words"] == 8


def test_text_nodes_are_separate_words():
    assert parse_html("<p>a</p><p>b</p>")["words"] == 2
    assert parse_html("<div>alpha</div><div>beta</div><ul><li>gamma</li><li>delta</li></ul>")["words"] == 4


def test_word_is_a_regex_word():
    # 42 | 3 14 | x_y | naïve | café s | quoted | 東京 | émigré  (— ’ « » 。 are not \w)
    body = "<p>42 3.14 x_y naïve\u2014café\u2019s \u00abquoted\u00bb 東京\u3002émigré</p>"
    assert parse_html(body)["words"] == 10


def test_no_body_text():
    record = parse_html("")
    assert record["words"] == 0
    assert record["simhash"] == "0000000000000000"


def test_document_without_body_element():
    assert parse_page(PAGE_URL, b"hello <b>there</b> world", "text/html")["words"] == 3
    record = parse_page(PAGE_URL, b"<html><frameset><frame src='a.html'></frameset></html>", "text/html")
    assert record["words"] == 0


def test_tokenizer_matches_the_regex_on_awkward_text():
    # The fast tokenizer is an optimisation of re.findall(r"\w+"); this pins
    # it to the regex on the characters where they could disagree.
    alphabet = "aZ09_ \t\n.,-'\u00e9\u00e0\u2014\u2019\u00a0\u0130\u0663\u2028\u3000\u4e2d\U0001F600\u0301\x1c\x85"
    rng = random.Random(7)
    for _ in range(2000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 120)))
        assert parse._words(text) == re.findall(r"\w+", text), repr(text)
    many_punctuation_marks = " ".join(chr(0x2010 + i) + "ab" for i in range(80)) + " 東京"
    assert parse._words(many_punctuation_marks) == re.findall(r"\w+", many_punctuation_marks)


# --------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------


def test_latin1_page_declared_by_meta_charset():
    body = b'<html><head><meta charset="iso-8859-1"><title>Caf\xe9 cr\xe8me</title></head><body>na\xefve</body></html>'
    record = parse_page(PAGE_URL, body, "text/html")
    assert record["title"] == "Café crème"
    assert record["words"] == 1
    assert record["simhash"] == reference_simhash("naïve")


def test_charset_from_http_equiv_meta():
    body = (
        b'<html><head><meta http-equiv="Content-Type" content="text/html; charset=windows-1252">'
        b"<title>\x93quoted\x94</title></head></html>"
    )
    assert parse_page(PAGE_URL, body, None)["title"] == "\u201cquoted\u201d"


def test_content_type_charset_wins_over_meta():
    utf8_body = '<meta charset="iso-8859-1"><title>café</title>'.encode("utf-8")
    assert parse_page(PAGE_URL, utf8_body, "text/html; charset=utf-8")["title"] == "café"
    latin1_body = '<meta charset="utf-8"><title>café</title>'.encode("latin-1")
    assert parse_page(PAGE_URL, latin1_body, 'text/html; charset="ISO-8859-1"')["title"] == "café"


def test_unknown_meta_charset_falls_back_to_utf8():
    body = '<meta charset="x-no-such-codec"><title>café</title>'.encode("utf-8")
    assert decode_html(body, "text/html").endswith("<title>café</title>")
    assert parse_page(PAGE_URL, body, "text/html")["title"] == "café"


def test_unknown_header_charset_falls_through_to_meta():
    body = '<meta charset="iso-8859-1"><title>café</title>'.encode("latin-1")
    assert parse_page(PAGE_URL, body, "text/html; charset=klingon")["title"] == "café"


def test_non_text_codec_names_fall_through():
    body = "<title>café</title>".encode("utf-8")
    for charset in ("hex", "rot13", "zlib", "idna"):
        assert decode_html(body, f"text/html; charset={charset}") == "<title>café</title>"


def test_default_is_utf8_with_replacement():
    assert decode_html(b"caf\xc3\xa9 \xff", None) == "café \ufffd"
    assert decode_html(b"\xef\xbb\xbfbom", "text/html") == "bom"


def test_meta_charset_beyond_4kb_is_ignored():
    body = b"<!-- " + b"x" * 4100 + b' --><meta charset="iso-8859-1">caf\xe9'
    assert decode_html(body, None).endswith("caf\ufffd")


@pytest.mark.parametrize("charset", [None, "utf-8", "utf-16", "utf-7", "iso-8859-1", "shift_jis", "idna", "bogus"])
def test_garbage_bytes_labelled_html_do_not_raise(charset):
    rng = random.Random(1234)
    body = bytes(rng.randrange(256) for _ in range(20_000))
    content_type = "text/html" if charset is None else f"text/html; charset={charset}"
    assert isinstance(decode_html(body, content_type), str)
    record = parse_page(PAGE_URL, body, content_type)
    assert isinstance(record["words"], int)
    assert isinstance(record["links"], int)
    assert re.fullmatch(r"[0-9a-f]{16}", record["simhash"])


# --------------------------------------------------------------------------
# Simhash
# --------------------------------------------------------------------------


def test_reference_pins_the_contract():
    # Computed once with reference_simhash: guards against the contract
    # drifting in the reference and the implementation together.
    assert reference_simhash("the quick brown fox jumps over the lazy dog") == "d768498a5956219f"
    assert reference_simhash("hello") == format(_reference_mix(_reference_word_hash("hello"), 0, 0), "016x")


@pytest.mark.parametrize(
    "visible_text",
    [
        "",
        "single",
        "two words",
        "exactly three words",
        "The quick brown fox jumps over the lazy dog. THE QUICK BROWN FOX!",
        "Crème brûlée, naïve café — déjà vu; İstanbul ΣΊΣΥΦΟΣ 東京 42 3.14 snake_case",
        random_text(1, 254),
        random_text(2, 257),  # one bit-count lane of 255 shingles, then a partial one
        random_text(3, 2000),
        # Identical shingles: every set bit is counted 598 times, which would
        # overflow any bit counter limited to a byte.
        "same " * 600,
        "ping pong " * 400,
    ],
)
def test_fast_simhash_matches_reference(visible_text):
    expected = reference_simhash(visible_text)
    assert simhash_words(re.findall(r"\w+", visible_text)) == expected
    page = parse_html(f"<p>{visible_text}</p>", "<title>not visible</title><script>var x;</script>")
    assert page["simhash"] == expected


def test_fast_simhash_matches_reference_on_many_word_lists():
    rng = random.Random(99)
    vocabulary = ["a", "B", "ccc", "Dd", "é", "İ", "ß", "word", "WORD", "x1", "_"]
    for length in list(range(0, 12)) + [254, 255, 256, 510, 511, 512, 777]:
        words = [rng.choice(vocabulary) for _ in range(length)]
        assert simhash_words(words) == reference_simhash_of_words(words), length


def test_fast_simhash_is_independent_of_the_word_cache(monkeypatch):
    words = re.findall(r"\w+", random_text(5, 300))
    warm = simhash_words(words)
    monkeypatch.setattr(simhash, "_word_hashes", simhash._WordHashCache())
    assert simhash_words(words) == warm
    monkeypatch.setattr(simhash, "_WORD_HASH_CACHE_MAX", 10)
    over_the_limit = simhash._word_hashes
    assert simhash_words(words) == warm
    assert simhash._word_hashes is not over_the_limit


def test_simhash_is_case_insensitive():
    assert parse_html("<p>Hello World Again</p>")["simhash"] == parse_html("<p>hello world again</p>")["simhash"]


def test_simhash_ignores_markup():
    text = random_text(11, 300)
    words = text.split()
    plain = parse_html(f"<p>{text}</p>")
    marked_up = parse_html(
        "<div><h2>" + " ".join(words[:5]) + "</h2><ul>"
        + "".join(f"<li><a href='/{i}'><b>{w}</b></a></li>" for i, w in enumerate(words[5:50]))
        + "</ul><p>" + " ".join(words[50:]) + "</p></div>"
        "<script>var noise = 'ignored words here';</script>"
    )
    assert plain["words"] == marked_up["words"] == 300
    assert plain["simhash"] == marked_up["simhash"]


def test_simhash_of_unrelated_texts_is_far_apart():
    first = parse_html(f"<p>{random_text(21, 1000)}</p>")["simhash"]
    second = parse_html(f"<p>{random_text(22, 1000)}</p>")["simhash"]
    assert hamming(first, second) > 16


def test_simhash_of_a_one_word_edit_is_close():
    words = random_text(31, 1000).split()
    edited = list(words)
    edited[500] = "replacement"
    original = parse_html(f"<p>{' '.join(words)}</p>")["simhash"]
    changed = parse_html(f"<p>{' '.join(edited)}</p>")["simhash"]
    assert hamming(original, changed) < 10


# --------------------------------------------------------------------------
# parse_batch
# --------------------------------------------------------------------------


def test_parse_batch_isolates_a_failing_item():
    good = html_page("<p>one two three</p>", "<title>ok</title>")
    results, cpu_seconds = timed(
        parse_batch,
        [
            (PAGE_URL, good, "text/html"),
            (PAGE_URL, None, "text/html"),
            ("http://example.com/img.png", b"\x89PNG", "image/png"),
        ]
    )
    assert len(results) == 3
    assert results[0] == parse_page(PAGE_URL, good, "text/html")
    assert results[0]["title"] == "ok" and results[0]["words"] == 3
    assert isinstance(results[1], str) and results[1].startswith("TypeError: ")
    assert results[2]["title"] is None and results[2]["sha256"] == hashlib.sha256(b"\x89PNG").hexdigest()


def test_parse_batch_error_strings_are_short(monkeypatch):
    def explode(url, body, content_type, want_links=False):
        raise ValueError("x" * 1000)

    monkeypatch.setattr(parse, "parse_page", explode)
    results, cpu_seconds = timed(parse_batch, [(PAGE_URL, b"", "text/html")])
    assert results == [("ValueError: " + "x" * 1000)[:200]]


def test_parse_batch_of_nothing():
    results, cpu_seconds = timed(parse_batch, [])
    assert results == []


def timed(function, *args):
    """``function(*args)``, a (results, CPU seconds) pair, checked: the CPU is this call's, not the process's so far."""
    started = time.perf_counter()
    results, cpu_seconds = function(*args)
    assert 0 <= cpu_seconds <= time.perf_counter() - started + 0.01  # one thread: its CPU within its wall time
    return results, cpu_seconds


def test_parse_batch_is_picklable_for_a_process_pool():
    import pickle

    assert pickle.loads(pickle.dumps(parse_batch)) is parse_batch
    assert pickle.loads(pickle.dumps(parse_page)) is parse_page
