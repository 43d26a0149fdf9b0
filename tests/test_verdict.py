"""The report's verdict rules, each on figures built to show one limit (real runs: test_report_verdicts.py)."""

from __future__ import annotations

import pytest

from crawler.verdict import judge


def figures(**changes) -> dict:
    """A healthy 10 s run of 1,000 pages at -c 32 that nothing in particular limited."""
    base = {
        "urls": 1000, "ok": 1000, "errors": {}, "wall_s": 10.0, "concurrency": 32,
        "cpu_s": 3.0, "parse_cpu_s": 1.0, "parse_wait_s": 0.0, "mean_in_flight": 8.0,
        "fetch_ms": {"p50": 80.0}, "first_byte_ms": {"p50": 20.0}, "fetches_in_processes": False,
    }  # fmt: skip
    base.update(changes)
    return base


@pytest.mark.parametrize(
    "changes, starts",
    [
        ({"urls": 0, "ok": 0}, "nothing to judge"),
        ({"ok": 0, "errors": {"timeout": 990, "dns": 10}}, "every fetch failed: 990 × timeout, 10 × dns"),
        ({"urls": 1, "ok": 1, "wall_s": 0.007}, "too short to judge: 1 ok page in 0.01 s"),
        ({"ok": 400, "errors": {"connect": 600}}, "too few ok pages to judge: 400 of 1000 (600 × connect)"),
        ({"parse_wait_s": 6.0, "parse_cpu_s": 15.0, "cpu_s": 19.0}, "parse-bound: fetching waited for the parse stage 60%"),
        ({"cpu_s": 18.0, "parse_cpu_s": 11.0}, "machine CPU-bound: the run used 1.80 of 2 cores"),
        ({"cpu_s": 10.5, "parse_cpu_s": 1.0}, "client CPU-bound: fetching kept its one core 95% busy (one process"),
        ({"cpu_s": 12.0, "parse_cpu_s": 1.0, "fetches_in_processes": True}, "under-filled"),  # 1.1 of 4 cores is not busy
        ({"mean_in_flight": 31.0, "fetch_ms": {"p50": 52.0}, "first_byte_ms": {"p50": 50.0}}, "server-bound: fetches waited 50 ms of 52 (p50)"),
        ({"mean_in_flight": 30.0, "fetch_ms": {"p50": 200.0}, "first_byte_ms": {"p50": 10.0}}, "latency-bound: 30.0 of 32 requests in flight"),
        ({}, "under-filled: only 8.0 of 32 requests in flight"),
    ],
)
def test_each_rule_names_its_limit_and_figure(changes, starts):
    cores = 4 if changes.get("fetches_in_processes") else 2
    assert judge(figures(**changes), cores=cores).startswith(starts)


def test_processes_are_judged_against_every_core():
    line = judge(figures(cpu_s=35.0, parse_cpu_s=1.0, fetches_in_processes=True), cores=4)
    assert line.startswith("client CPU-bound: fetching used 3.40 of the 4 cores its processes can use") and "GIL" not in line
    # as many cores as there are processes: 2 pool workers, both busy, on a 4-core machine
    two = figures(cpu_s=18.0, parse_cpu_s=1.0, fetches_in_processes=True, engine_stats={"processes": 2})
    assert judge(two, cores=4).startswith("client CPU-bound: fetching used 1.70 of the 2 cores its processes can use")


def test_a_cluster_that_fetches_and_parses_on_its_workers_is_not_one_gil():
    # dask on a LocalCluster of 2 workers, 6 s: parsing happened on the workers (parse_cpu_s 0)
    dask = figures(wall_s=6.0, cpu_s=5.97, parse_cpu_s=0.0, mean_in_flight=11.5, engine_stats={"workers": 2, "remote_parse_cpu_s": 2.44})
    line = judge(dask, cores=2)
    assert "GIL" not in line and "one core" not in line, line
    assert line.startswith("under-filled: only 11.5 of 32 requests in flight on average with the client at 0.59 cores"), line
    busy = figures(wall_s=6.0, cpu_s=12.0, parse_cpu_s=0.0, engine_stats={"workers": 2, "remote_parse_cpu_s": 2.0})
    assert judge(busy, cores=2).startswith("client CPU-bound: fetching used 1.67 of the 2 cores its processes can use")


def test_a_known_server_delay_gives_the_ideal_rate():
    line = judge(figures(mean_in_flight=31.0, fetch_ms={"p50": 52.0}, first_byte_ms={"p50": 50.0}), cores=2, latency_s=0.05)
    assert "the server's 50 ms allow 640" in line


def test_a_busy_machine_is_said_not_hidden():
    line = judge(figures(machine_cpu_s=15.0), cores=2)  # 1.2 cores went to processes outside the run
    assert line.endswith("the machine was busy: other processes took 1.20 of its 2 cores")
    assert "busy" not in judge(figures(machine_cpu_s=4.0), cores=2)
    assert "busy" not in judge(figures(ok=0, errors={"timeout": 1000}, machine_cpu_s=20.0), cores=2)
