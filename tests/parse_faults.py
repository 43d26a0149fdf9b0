"""A parse function that misbehaves on marked pages, for the parse stage's fault tests.

It lives in its own importable module because the parse stage's worker
processes import the function by name.
"""

import os
import signal
import time

from crawler import parse

CRASH = b"<!-- crash the worker -->"
HANG = b"<!-- hang in the worker -->"
DEAF = b"<!-- hang where no signal reaches -->"


def parse_batch_with_faults(items, timeout=None, want_links=False):
    for _, body, _ in items:
        if CRASH in body:
            os.kill(os.getpid(), 9)  # as a segfault or the OOM killer would
    return parse.parse_batch(items, timeout, want_links)


def parse_page_that_may_hang(url, body, content_type, want_links=False):
    if DEAF in body:  # like a C extension stuck in a loop: SIGALRM never gets through
        signal.signal(signal.SIGALRM, signal.SIG_IGN)
        while True:
            time.sleep(0.01)
    if HANG in body:
        while True:  # pure Python: SIGALRM reaches it
            time.sleep(0.01)
    return _real_parse_page(url, body, content_type, want_links)


_real_parse_page = parse.parse_page


def parse_batch_with_hangs(items, timeout=None, want_links=False):
    parse.parse_page = parse_page_that_may_hang
    return parse.parse_batch(items, timeout, want_links)
