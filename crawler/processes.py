"""Every process a run starts ends with it, ``kill -9`` of the run included.

A process killed with SIGKILL runs no clean-up, so its children must notice
on their own that it is gone.  Each child the crawl starts watches a pipe
whose other end only its parent holds: when the parent dies, for whatever
reason, the kernel closes that end, the pipe reports end of file, and a
daemon thread in the child ends it with ``os._exit`` (no clean-up either:
there is no one left to hand results to).

Why a pipe and a thread rather than ``prctl(PR_SET_PDEATHSIG)``: the death
signal fires when the parent *thread* that started the child exits, not the
process, and a ``forkserver`` child's parent is the fork server, not the
crawl.  The pipe is the parent process's own, whatever thread or server
started the child; it works on every POSIX system and on Windows.

Who uses what:

* ``multiprocessing`` children (parse workers, pool engine workers):
  :func:`follow_parent`, as the pool initializer (or
  called from it).  ``multiprocessing`` already keeps such a pipe for every
  start method (``parent_process().sentinel``).
* the demo site (``python -m crawler.site``, a plain subprocess):
  :func:`exit_on_eof` on its stdin, a pipe the parent holds and never writes.
* the ``forkserver`` process and the ``multiprocessing`` resource tracker
  need nothing: each exits once every holder of its pipe is gone (the
  server's "alive" pipe and the tracker's pipe are held by the parent and
  by each forkserver child, and by no one else), i.e. as soon as the
  workers above have exited.
* Dask's LocalCluster worker processes follow their parent by themselves
  (``distributed.process.AsyncProcess`` watches a pipe the same way).

And every process a run starts leaves the parent's main *script* alone
(:func:`hide_script_main`): a ``spawn`` or ``forkserver`` child runs the
parent's ``__main__`` file again before its task, which kills the child of a
script that calls :func:`crawler.crawl` without an ``if __name__ ==
"__main__":`` guard, and costs every worker of ``crawl`` an import of the
CLI.  Our children need nothing from ``__main__``: their work is in
``crawler`` and its plugins.
"""

from __future__ import annotations

import importlib.machinery
import multiprocessing
import multiprocessing.connection
import os
import sys
import threading

__all__ = ["exit_on_eof", "follow_parent", "hide_script_main", "preload_in_forkserver", "show_script_main", "start_context"]

# The exit code of a process that ended because its parent was gone.
PARENT_GONE_EXIT = 1

# Fallback only (a process with no pipe to watch): how often its parent's pid is checked.
_PPID_POLL_S = 0.5

# What the forkserver imports once for every process it forks: multiprocessing's
# default, and what engines add (see preload_in_forkserver).
_FORKSERVER_PRELOAD = ["__main__"]


def start_context() -> multiprocessing.context.BaseContext:
    """How the run starts its processes: ``forkserver`` where the platform has it, else ``spawn``.

    Never ``fork``: the asyncio engine, the parse stage and the progress bar
    run threads, and forking a process with threads alive can deadlock the child.
    """
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


def preload_in_forkserver(names: list[str]) -> None:
    """Have the forkserver import ``names`` once, so that the processes it forks start with them.

    Kept here, added to, and handed whole to the public
    ``set_forkserver_preload`` (which replaces the list and has no getter).
    Call it before the server starts (see :func:`crawler.pipeline.preload_for`):
    the list only counts then, and the parse stage may start it before an
    engine runs.
    """
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return
    added = [name for name in names if name not in _FORKSERVER_PRELOAD]
    if added:
        _FORKSERVER_PRELOAD.extend(added)
        multiprocessing.get_context("forkserver").set_forkserver_preload(list(_FORKSERVER_PRELOAD))


def follow_parent(code: int = PARENT_GONE_EXIT) -> None:
    """In a ``multiprocessing`` child: exit at once when the parent process is gone.

    Call it in the child (a pool ``initializer`` is the place); it returns at
    once, having started a daemon thread.  A worker waiting for a task is
    blocked on its pool's queue, whose pipes it holds open itself, so without
    this it would wait forever once the parent is killed.  Calling it again
    in the same process does nothing more.
    """
    global _following
    with _lock:
        if _following == os.getpid():
            return
        _following = os.getpid()
    parent = multiprocessing.parent_process()
    sentinel = getattr(parent, "sentinel", None)
    if sentinel is not None:
        _watch(lambda: multiprocessing.connection.wait([sentinel]), code)
    else:  # not started by multiprocessing, or by an old one: the parent's pid changes when it dies
        parent_pid = os.getppid()

        def poll() -> None:
            while os.getppid() == parent_pid:
                threading.Event().wait(_PPID_POLL_S)

        _watch(poll, code)


def exit_on_eof(fd: int, code: int = PARENT_GONE_EXIT) -> None:
    """Exit at once when ``fd`` (a pipe only the parent writes to, such as stdin) reaches end of file.

    Anything read from it before then is discarded.
    """

    def read_to_eof() -> None:
        while True:
            try:
                if not os.read(fd, 4096):
                    return
            except InterruptedError:
                continue
            except OSError:  # closed or invalid: the parent's end is as good as gone
                return

    _watch(read_to_eof, code)


_lock = threading.Lock()
_following = 0  # pid of the process that already watches its parent (a fork copies the module)


def _watch(wait, code: int) -> None:
    def run() -> None:
        wait()
        os._exit(code)

    threading.Thread(target=run, name="crawl-exit-with-parent", daemon=True).start()


_main_lock = threading.Lock()
_main_hiders = 0
_main_spec_kept: tuple | None = None


def hide_script_main() -> None:
    """Until the matching :func:`show_script_main`, started processes do not run the main script.

    ``multiprocessing`` tells a child to run ``__main__`` again by its file
    (``init_main_from_path``) only when ``__main__`` has no module spec, i.e.
    for a script; it skips a main module named ``__main__``.  So meanwhile a
    script's ``__main__`` gets that spec (calls nest: the first hides, the
    last shows).  A REPL, a notebook and ``python -m`` have nothing to hide.
    """
    global _main_hiders, _main_spec_kept
    main = sys.modules.get("__main__")
    with _main_lock:
        _main_hiders += 1
        if _main_hiders == 1 and getattr(main, "__file__", None) and getattr(main, "__spec__", None) is None:
            _main_spec_kept = (main, main.__spec__)
            main.__spec__ = importlib.machinery.ModuleSpec("__main__", None)


def show_script_main() -> None:
    """Undo one :func:`hide_script_main`: the last one gives ``__main__`` its own spec back."""
    global _main_hiders, _main_spec_kept
    with _main_lock:
        _main_hiders -= 1
        if _main_hiders == 0 and _main_spec_kept is not None:
            main, spec = _main_spec_kept
            main.__spec__ = spec
            _main_spec_kept = None
