"""The frontier's log: what a stopped deep crawl needs to take up where it was."""

from __future__ import annotations

from crawler.frontier import Frontier, state_path

H = "http://h.test"  # links reach the frontier resolved, as the parse stage gives them


def test_queued_links_survive_the_process_and_deduplicate_after_restore(tmp_path):
    path = str(tmp_path / "out.jsonl.asyncio.frontier")
    first = Frontier(None, same_host=True, path=path)
    first.seen("http://h.test/")
    first.offer([H + "/a", H + "/b", H + "/a#x", "http://other.test/x"], "http://h.test/", list_urls=1, depth=1)
    first.begin_level(1)
    first.offer([H + "/c", H + "/a"], "http://h.test/a", list_urls=1, depth=2)
    first.close()  # as good as a kill -9: every fact was flushed when written

    again = Frontier(None, same_host=True, path=path)
    again.restore()
    assert again.levels_begun == 1 and not again.complete
    assert list(again.queued_at(1)) == [("http://h.test/a", "http://h.test/"), ("http://h.test/b", "http://h.test/")]
    assert list(again.queued_at(2)) == [("http://h.test/c", "http://h.test/a")]
    again.offer([H + "/a", H + "/c", H + "/d", H + "/"], "http://h.test/b", list_urls=1, depth=2)  # only /d is new
    assert [url for url, _ in again.queued_at(2)] == ["http://h.test/c", "http://h.test/d"]
    again.finish()
    again.close()

    done = Frontier(None, same_host=True, path=path)
    done.restore()
    assert done.complete


def test_a_torn_last_line_is_ignored_and_the_log_goes_on_cleanly(tmp_path):
    path = str(tmp_path / "state")
    first = Frontier(None, same_host=False, path=path)
    first.offer(["http://h.test/a"], "http://h.test/", list_urls=1, depth=1)
    first.close()
    with open(path, "a", encoding="utf-8") as log:
        log.write('["queue",1,"http://h.test/torn')  # killed mid-write
    again = Frontier(None, same_host=False, path=path)
    again.restore()
    again.offer(["http://h.test/b"], "http://h.test/", list_urls=1, depth=1)
    assert [url for url, _ in again.queued_at(1)] == ["http://h.test/a", "http://h.test/b"]
    again.close()


def test_without_a_path_the_log_is_a_temporary_file(tmp_path):
    frontier = Frontier(2, same_host=True)
    frontier.offer([H + "/a", H + "/b", H + "/c"], "http://h.test/", list_urls=1, depth=1)  # max_pages 2: one list URL + one link
    assert [url for url, _ in frontier.queued_at(1)] == ["http://h.test/a"]
    assert frontier.stats()["over_max_pages"] == 2
    frontier.close()


def test_state_file_name_is_beside_the_output():
    assert state_path("runs/int.jsonl", "pool") == "runs/int.jsonl.pool.frontier"


def test_a_list_line_queued_as_a_link_before_it_was_read_is_crawled_at_depth_0_only(tmp_path):
    frontier = Frontier(None, same_host=True, path=str(tmp_path / "state"))
    frontier.listed(H + "/")
    frontier.offer([H + "/a", H + "/b"], H + "/", list_urls=1, depth=1)  # /b is a list line not read yet
    frontier.listed(H + "/b")
    frontier.listed(H + "/c")
    assert frontier.count_at(1) == 2
    assert list(frontier.level(1)) == [(H + "/a", H + "/")]  # /b: depth 0 only
    assert list(frontier.queued_at(1)) == [(H + "/a", H + "/"), (H + "/b", H + "/")]  # the log keeps what it queued
    assert frontier.stats()["listed"] == 1
    frontier.close()
    facts = (tmp_path / "state").read_text().splitlines()
    assert facts == ['["seen","http://h.test/"]', '["queue",1,"http://h.test/a","http://h.test/"]',
                     '["queue",1,"http://h.test/b","http://h.test/"]', '["seen","http://h.test/c"]']  # fmt: skip


def test_seen_facts_reach_the_file_on_sync_and_a_fresh_frontier_replaces_the_log(tmp_path):
    path = tmp_path / "state"
    frontier = Frontier(None, same_host=True, path=str(path))
    frontier.seen(H + "/redirected-here")
    frontier.sync()
    assert path.read_text() == '["seen","http://h.test/redirected-here"]\n'  # before the record that needs it
    frontier.close()
    restored = Frontier(None, same_host=True, path=str(path))
    restored.restore()
    restored.offer([H + "/redirected-here", H + "/new"], H + "/", list_urls=1, depth=1)
    assert restored.stats()["deduplicated"] == 1 and restored.count_at(1) == 1
    restored.close()
    fresh = Frontier(None, same_host=True, path=str(path), fresh=True)
    fresh.close()
    assert path.read_text() == ""
