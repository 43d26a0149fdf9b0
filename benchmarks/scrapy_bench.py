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

import time

import scrapy
from scrapy import signals
from scrapy.crawler import CrawlerProcess

from bare_common import arg_parser, cpu_seconds, report, urls_from


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
    parser = arg_parser(__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("fetch", "extract"), default="fetch")
    args, urls = urls_from(parser)

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
    report(f"scrapy_{args.mode}", args, urls, counts["pages"], counts["errors"], counts["bytes"], seconds, cpu,
           lead={"scrapy": scrapy.__version__})


if __name__ == "__main__":
    main()
