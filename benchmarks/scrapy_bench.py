"""Scrapy on the same URL list: fetch only, or with title + links extracted.

The point of comparison the issue names for a "real" crawler framework.  One
spider requests every URL of the list (no robots.txt, no cookies, no retries,
no throttling, no duplicate filter, logging off, telnet off), with
``CONCURRENT_REQUESTS`` and ``CONCURRENT_REQUESTS_PER_DOMAIN`` set to the
concurrency, through ``CrawlerProcess`` on Scrapy's default reactor.

* ``--mode fetch``: the callback reads nothing but the body length;
* ``--mode extract``: the callback takes the ``<title>`` text and the set of
  absolute ``<a href>`` URLs (parsel/lxml, as any Scrapy user would write
  it) and yields them as an item.

    python benchmarks/scrapy_bench.py URLFILE -c 64 --mode fetch
    python benchmarks/scrapy_bench.py --base http://127.0.0.1:8080 --count 5000 -c 64 --mode extract

Timed from ``spider_opened`` to ``spider_closed`` (Scrapy's own start-up
excluded, as the crawler's and the bare loops' start-ups are).  Prints one
JSON line like the bare loops (see bare_aiohttp.py).  Needs
``pip install '.[bench]'`` (or ``pip install scrapy``).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time

import scrapy
from scrapy import signals
from scrapy.crawler import CrawlerProcess


def cpu_seconds() -> float:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def read_urls(args: argparse.Namespace) -> list[str]:
    if args.base:
        return [f"{args.base.rstrip('/')}/page/{n}" for n in range(args.count)]
    with open(args.urls, encoding="utf-8") as handle:
        return [line.strip() for line in handle if line.strip() and not line.lstrip().startswith("#")]


class ListSpider(scrapy.Spider):
    name = "bench"
    custom_settings: dict = {}

    def __init__(self, urls: list[str], extract: bool, counts: dict, **kwargs):
        super().__init__(**kwargs)
        self.url_list = urls
        self.extract = extract
        self.counts = counts

    async def start(self):  # Scrapy >= 2.13
        for request in self.start_requests():
            yield request

    def start_requests(self):  # older Scrapy
        for url in self.url_list:
            yield scrapy.Request(url, callback=self.parse, errback=self.failed, dont_filter=True)

    def parse(self, response):
        if not 200 <= response.status < 300:
            self.counts["errors"] += 1
            return
        self.counts["pages"] += 1
        self.counts["bytes"] += len(response.body)
        if self.extract:
            title = response.css("title::text").get()
            links = {response.urljoin(href).split("#", 1)[0] for href in response.css("a::attr(href)").getall()}
            links = {link for link in links if link.startswith(("http://", "https://"))}
            yield {"url": response.url, "title": " ".join(title.split()) if title else None, "links": len(links)}

    def failed(self, failure):
        self.counts["errors"] += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("urls", nargs="?", help="file with one URL per line")
    parser.add_argument("--base", help="base URL of the synthetic site (instead of a file)")
    parser.add_argument("--count", type=int, default=1000, help="with --base: URLs /page/0 .. /page/COUNT-1")
    parser.add_argument("-c", "--concurrency", type=int, default=64)
    parser.add_argument("--mode", choices=("fetch", "extract"), default="fetch")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per request")
    args = parser.parse_args()
    if not args.urls and not args.base:
        parser.error("give URLFILE or --base")
    urls = read_urls(args)

    settings = {
        "LOG_ENABLED": False,
        "TELNETCONSOLE_ENABLED": False,
        "ROBOTSTXT_OBEY": False,
        "COOKIES_ENABLED": False,
        "RETRY_ENABLED": False,
        "REDIRECT_ENABLED": True,
        "AUTOTHROTTLE_ENABLED": False,
        "HTTPCACHE_ENABLED": False,
        "DOWNLOAD_DELAY": 0,
        "DOWNLOAD_TIMEOUT": args.timeout,
        "CONCURRENT_REQUESTS": args.concurrency,
        "CONCURRENT_REQUESTS_PER_DOMAIN": args.concurrency,
        "CONCURRENT_ITEMS": 100,
        "DUPEFILTER_CLASS": "scrapy.dupefilters.BaseDupeFilter",
        "USER_AGENT": "scrapy-bench",
        "EXTENSIONS": {"scrapy.extensions.memusage.MemoryUsage": None, "scrapy.extensions.logstats.LogStats": None},
    }
    counts = {"pages": 0, "errors": 0, "bytes": 0}
    marks: dict[str, float] = {}

    def opened(spider):
        marks["t0"], marks["cpu0"] = time.perf_counter(), cpu_seconds()

    def closed(spider, reason):
        marks["t1"], marks["cpu1"] = time.perf_counter(), cpu_seconds()
        marks["reason"] = reason

    process = CrawlerProcess(settings)
    crawler = process.create_crawler(ListSpider)
    crawler.signals.connect(opened, signal=signals.spider_opened)
    crawler.signals.connect(closed, signal=signals.spider_closed)
    process.crawl(crawler, urls=urls, extract=args.mode == "extract", counts=counts)
    process.start()

    seconds, cpu = marks["t1"] - marks["t0"], marks["cpu1"] - marks["cpu0"]
    pages = counts["pages"]
    print(json.dumps({
        "loop": f"scrapy_{args.mode}", "scrapy": scrapy.__version__, "concurrency": args.concurrency, "urls": len(urls),
        "pages": pages, "errors": counts["errors"], "bytes": counts["bytes"],
        "seconds": round(seconds, 3), "pages_per_s": round(pages / seconds, 1),
        "cpu_s": round(cpu, 3), "cpu_ms_per_page": round(1000 * cpu / max(pages, 1), 3),
    }))
    sys.exit(0 if pages else 1)


if __name__ == "__main__":
    main()
