"""README's promises, checked: its example plugin runs, its commands are the CI's."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

README = (Path(__file__).parent.parent / "README.md").read_text()


def test_example_plugin_from_readme_runs(tmp_path, server):
    [code] = re.findall(r"```python\n(# my_urllib_engine.py\n.*?)```", README, re.S)
    (tmp_path / "my_urllib_engine.py").write_text(code)
    urls = tmp_path / "urls.txt"
    urls.write_text(f"{server.url('/page/readme')}\n{server.url('/redirect/2')}\n{server.url('/status/404')}\n")
    out = tmp_path / "r.jsonl"
    result = subprocess.run(
        [sys.executable, "-m", "crawler", str(urls), "--plugin", "my_urllib_engine", "-e", "urllib",
         "--out", str(out), "-q", "--parse-workers", "0"],
        capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(tmp_path)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    records = {r["url"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert records[server.url("/page/readme")]["title"] == "readme"
    assert records[server.url("/redirect/2")]["final_url"] == server.url("/page/final")
    assert records[server.url("/status/404")]["error"] == "http_status"


def test_ci_runs_the_readme_test_command():
    ci = (Path(__file__).parent.parent / ".ci" / "run").read_text()
    assert "<!-- test-command -->" in ci and "<!-- test-command -->" in README


def test_every_hookspec_is_documented_with_its_signature():
    import inspect

    from crawler import hookspecs

    specs = [name for name, obj in vars(hookspecs).items() if inspect.isfunction(obj) and hasattr(obj, "crawler_spec")]
    assert specs == ["crawler_engines"]
    for name in specs:
        assert inspect.getdoc(getattr(hookspecs, name)), name
        assert f"def {name}(" in README, f"README shows no example of {name}"


def test_api_examples_from_readme_run_as_plain_scripts(tmp_path, server):
    scripts = dict(re.findall(r"```python\n# (crawl_titles\.py|compare_engines\.py):.*?\n(.*?)```", README, re.S))
    assert sorted(scripts) == ["compare_engines.py", "crawl_titles.py"]
    (tmp_path / "urls.txt").write_text("".join(server.url(f"/page/readme-api-{i}") + "\n" for i in range(5)))
    outputs = {}
    for name, code in scripts.items():  # as files, without a main guard, as a user runs them
        (tmp_path / name).write_text(code)
        done = subprocess.run([sys.executable, name], capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
        outputs[name] = done.stdout.splitlines()
    assert sorted(line.split()[-1] for line in outputs["crawl_titles.py"]) == [f"readme-api-{i}" for i in range(5)]
    assert [line.split()[0] for line in outputs["compare_engines.py"]] == ["asyncio", "threads", "yield"]
    assert all("pages/s" in line for line in outputs["compare_engines.py"])
