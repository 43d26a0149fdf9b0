"""What one dask run counts, and the ``engine_stats`` it reports: tasks, re-runs, and whose CPU is whose.

The report adds ``remote_cpu_s`` to its ``cpu_s``, so it must be CPU that
this machine's process tree does not already count: a ``scheduler=``
cluster's workers, measured over the run.  A LocalCluster's workers are the
run's own children, whose CPU reaches ``cpu_s`` through ``RUSAGE_CHILDREN``:
for them ``remote_cpu_s`` is null, and ``child_workers_cpu_s`` says how much
of ``cpu_s`` they are.
"""

from __future__ import annotations

import collections
import dataclasses

from .options import Options


@dataclasses.dataclass
class Figures:
    """One run's counters, kept by :class:`.run.Run` on the client."""

    batches: int = 0  # of the URL list (a partitioned batch is several tasks)
    tasks: int = 0  # submitted, re-runs included
    resubmitted: int = 0  # batches run again: dropped, lost, or pinned to a worker that left
    split: int = 0  # batches re-run one URL per task after KilledWorker
    peak_batches_in_flight: int = 0
    per_worker: collections.Counter = dataclasses.field(default_factory=collections.Counter)  # records
    workers_seen: set = dataclasses.field(default_factory=set)
    cluster_start_s: float = 0.0
    close_s: float = 0.0
    task_cpu_s: float = 0.0  # process_time of the tasks, on the workers
    parse_cpu_s: float = 0.0  # the part of it that parsed
    cpu_at_start: dict = dataclasses.field(default_factory=dict)  # worker address -> its CPU so far
    workers_cpu_s: float | None = None  # the workers' CPU over the run
    child_workers_cpu_s: float | None = None  # a LocalCluster's workers' whole lives
    politeness: dict | None = None  # the workers' gates, merged

    def took(self, outcome: dict) -> None:
        """A finished task's outcome (see :func:`.worker.run_batch`)."""
        self.per_worker[outcome["worker"]] += len(outcome["results"])
        self.task_cpu_s += outcome["cpu_s"]
        self.parse_cpu_s += outcome["parse_cpu_s"]

    def started(self, cpu_by_worker: dict[str, float]) -> None:
        """Each worker's CPU as the run starts (:func:`.worker.ready`)."""
        self.cpu_at_start = dict(cpu_by_worker)
        self.workers_seen.update(cpu_by_worker)

    def ended(self, after: dict[str, tuple[float, dict | None]], own_cluster: bool) -> None:
        """What each worker said as the run ended (:func:`.worker.after_run`): its CPU so far and its gate's figures."""
        if not after:
            return
        if self.cpu_at_start:
            self.workers_cpu_s = sum(max(0.0, cpu - self.cpu_at_start.get(addr, 0.0)) for addr, (cpu, _) in after.items())
        if own_cluster:  # their whole lives, start-up included: what RUSAGE_CHILDREN adds
            self.child_workers_cpu_s = sum(cpu for cpu, _ in after.values())
        gates = [gate for _, gate in after.values() if gate]
        if gates:
            self.politeness = {
                "gates": len(gates),
                "hosts": max(g["hosts"] for g in gates),
                "peak_in_flight_per_host": max(g["peak_in_flight_per_host"] for g in gates),
            }

    def engine_stats(self, options: Options, *, threads: int, partition: bool, session: bool) -> dict:
        """The report's ``engine_stats`` (README lists them).

        ``threads``: the cluster's worker threads when last seen; ``partition``:
        whether each host's URLs went to one worker; ``session``: whether the
        cluster served the whole crawl rather than this run alone.
        """
        own_cluster = options.scheduler is None
        if own_cluster:
            remote = None
            note = (
                "LocalCluster workers are this run's child processes, reaped before it ends: "
                "their CPU is already in cpu_s (RUSAGE_CHILDREN), so none is added"
            )
        elif self.workers_cpu_s is not None:
            remote = _seconds(self.workers_cpu_s)
            note = "user+sys CPU of the cluster's worker processes during the run (psutil, through client.run)"
        else:
            remote = _seconds(self.task_cpu_s)
            note = "CPU of this run's tasks on the workers (process_time); the workers' own overhead not included"
        return {
            "cluster": f"LocalCluster({options.workers} workers x 1 thread)" if own_cluster else options.scheduler,
            "workers": len(self.workers_seen),
            "threads": threads,
            "batch": options.batch,
            "batches": self.batches,
            "tasks": self.tasks,
            "resubmitted": self.resubmitted,
            "split": self.split,
            "host_partition": partition,
            "peak_batches_in_flight": self.peak_batches_in_flight,
            "records_per_worker": dict(sorted(self.per_worker.items())),
            "cluster_start_s": _seconds(self.cluster_start_s),
            "session": session,
            "close_s": _seconds(self.close_s),
            "task_cpu_s": _seconds(self.task_cpu_s),
            "remote_parse_cpu_s": _seconds(self.parse_cpu_s),
            "workers_cpu_s": _seconds(self.workers_cpu_s),
            "remote_cpu_s": remote,
            "remote_cpu_note": note,
            # the part of the report's cpu_s that is LocalCluster workers (this run's children), not the client
            "child_workers_cpu_s": _seconds(self.child_workers_cpu_s),
            "politeness": self.politeness,
        }


def _seconds(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
