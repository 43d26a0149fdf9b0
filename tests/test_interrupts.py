"""Ctrl-C and SIGTERM sent to a real ``crawl`` process in the middle of a crawl."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_keeps_what_was_fetched_and_leaves_no_process(engine_name, server, tmp_path, signum, code):
    urls = tmp_path / "urls.txt"
    urls.write_text("".join(server.url(f"/delay?s=0.4&i={i}") + "\n" for i in range(400)))
    out, report = tmp_path / "r.jsonl", tmp_path / "r.json"
    process = subprocess.Popen(
        [sys.executable, "-m", "crawler", str(urls), "-e", engine_name, "-c", "8", "--parse-workers", "1",
         "--out", str(out), "--report", str(report), "-q"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (not out.exists() or out.stat().st_size == 0):
        time.sleep(0.05)  # wait until records are flowing
    children = psutil.Process(process.pid).children(recursive=True)
    process.send_signal(signum)
    sent = time.monotonic()
    stdout, stderr = process.communicate(timeout=30)
    assert time.monotonic() - sent < 5
    assert process.returncode == code, stderr
    assert "Traceback" not in stderr

    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert 0 < len(records) < 400
    assert all(r["ok"] for r in records)
    [summary] = json.loads(report.read_text())["engines"]
    assert summary["urls"] == len(records) and summary["interrupted"]
    assert "crawl report" in stdout

    psutil.wait_procs(children, timeout=5)
    assert [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE] == []


def test_sigkill_then_resume_gives_a_complete_duplicate_free_file(engine_name, server, tmp_path):
    urls = tmp_path / "urls.txt"
    all_urls = [server.url(f"/delay?s=0.05&i={i}") for i in range(200)]
    urls.write_text("\n".join(all_urls) + "\n")
    out = tmp_path / "r.jsonl"
    command = [sys.executable, "-m", "crawler", str(urls), "-e", engine_name, "-c", "4", "--parse-workers", "1", "--out", str(out), "-q"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (not out.exists() or out.read_text().count("\n") < 20):
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)  # the whole group: workers too, as a machine crash would
    process.wait()
    first_run = out.read_text().count("\n")
    assert 20 <= first_run < 200

    resumed = subprocess.run([*command, "--resume", "--report", str(tmp_path / "r.json")], capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["url"] for r in records) == sorted(all_urls)  # all there, none twice
    [summary] = json.loads((tmp_path / "r.json").read_text())["engines"]
    assert summary["skipped"] >= first_run - 1 and summary["skipped"] + summary["urls"] == 200
