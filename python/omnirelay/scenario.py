"""Given/When/Then scenarios over real clusters.

A scenario is a function of a :class:`Scenario`; each step is a context
manager whose start, end, duration and outcome land in the artifacts
(``steps.jsonl`` and a readable ``steps.log``), and the run ends with a
verdict (``verdict.json``)::

    def scenario(s: Scenario) -> None:
        with s.given("a three-node cluster"):
            cluster = s.cluster("three-node")
        with s.when("node-2 pauses for 1 s"):
            before = s.snapshot("before")
            cluster.chaos.pause("node-2", duration_s=1)
        with s.then("node-2 stops answering, then recovers"):
            s.eventually(lambda: not cluster["node-2"].healthy(0.3), within_s=2)
            s.eventually(lambda: cluster["node-2"].healthy(0.3), within_s=5)

Assertions: :func:`expect_counter_delta`, :func:`expect_gauge`,
:func:`expect_percentile` on metric snapshots; :class:`History` for RPC results
(every operation ends ok, fail or info — Jepsen's model, where a timeout is an
unknown outcome, not a failure); :func:`assert_golden` for JSON snapshots
(update goldens with ``OMNIRELAY_UPDATE_GOLDEN=1`` or ``pytest --update-golden``).

The same function runs under pytest (fixture ``scenario``) and without it
(``omnirelay scenario run NAME``; see :func:`run_scenario`).
"""

from __future__ import annotations

import collections
import contextlib
import difflib
import importlib.util
import json
import os
import socket
import sys
import threading
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Union

from omnirelay.harness.metrics import MetricsSnapshot, delta

UPDATE_GOLDEN_ENV = "OMNIRELAY_UPDATE_GOLDEN"


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1000):03d}Z"


# -- steps ------------------------------------------------------------------------------

@dataclass
class Step:
    kind: str           # given | when | then | and
    text: str
    started_at: float
    ended_at: Optional[float] = None
    status: str = "running"   # running | passed | failed
    error: Optional[str] = None
    notes: List[str] = field(default_factory=list)

    @property
    def duration_s(self) -> float:
        return (self.ended_at or time.time()) - self.started_at

    def line(self) -> str:
        mark = {"passed": "ok  ", "failed": "FAIL", "running": "..  "}[self.status]
        text = f"{_iso(self.started_at)} {mark} {self.kind.upper():5} {self.text} ({self.duration_s:.2f}s)"
        for note in self.notes:
            text += f"\n{'':29}- {note}"
        if self.error:
            text += "\n" + "\n".join(f"{'':29}! {l}" for l in self.error.splitlines())
        return text


class Scenario:
    """One run of a scenario: steps, artifacts, clusters, verdict."""

    def __init__(self, name: str, artifacts_dir: Union[str, Path], *, scale: str = "ci", seed: int = 0,
                 update_golden: Optional[bool] = None, golden_dir: Union[str, Path, None] = None,
                 echo: Optional[Callable[[str], None]] = None, cluster_kwargs: Optional[Dict[str, Any]] = None):
        self.name = name
        self.artifacts_dir = Path(artifacts_dir).resolve()
        self.artifacts_dir.mkdir(parents=True, exist_ok=True)
        self.scale = scale
        self.seed = seed
        self.update_golden = update_golden
        self.golden_dir = Path(golden_dir) if golden_dir else None
        self.steps: List[Step] = []
        self.clusters: List[Any] = []
        self._echo = echo
        self._cluster_kwargs = dict(cluster_kwargs or {})
        self._lock = threading.Lock()
        self.started_at = time.time()
        self.failed = False
        self.error: Optional[str] = None
        self._log("scenario", f"{name} (scale={scale}, seed={seed}, artifacts={self.artifacts_dir})")

    # -- logging ----------------------------------------------------------------------
    def _log(self, event: str, text: str, **fields: Any) -> None:
        record = {"ts": time.time(), "time": _iso(time.time()), "event": event, "text": text, **fields}
        with self._lock:
            with open(self.artifacts_dir / "steps.jsonl", "a") as f:
                f.write(json.dumps(record, default=str) + "\n")

    def _write_step(self, step: Step) -> None:
        with self._lock:
            with open(self.artifacts_dir / "steps.log", "a") as f:
                f.write(step.line() + "\n")
        if self._echo is not None:
            self._echo(step.line())

    @contextlib.contextmanager
    def step(self, kind: str, text: str) -> Iterator[Step]:
        step = Step(kind, text, time.time())
        self.steps.append(step)
        self._log("step.start", text, kind=kind)
        try:
            yield step
        except BaseException as error:
            step.status = "failed"
            step.error = "".join(traceback.format_exception_only(type(error), error)).strip()
            self.failed = True
            raise
        else:
            step.status = "passed"
        finally:
            step.ended_at = time.time()
            self._log("step.end", text, kind=kind, status=step.status, duration_s=round(step.duration_s, 3),
                      error=step.error, notes=step.notes)
            self._write_step(step)

    def given(self, text: str):
        return self.step("given", text)

    def when(self, text: str):
        return self.step("when", text)

    def then(self, text: str):
        return self.step("then", text)

    def and_(self, text: str):
        return self.step("and", text)

    def note(self, text: str) -> None:
        """Attach a line to the current step (shown in the step log)."""
        if self.steps:
            self.steps[-1].notes.append(text)
        self._log("note", text)

    # -- scale ------------------------------------------------------------------------------
    def duration(self, ci: float, full: float) -> float:
        """A phase length: ``ci`` seconds by default, ``full`` with ``--scale full``."""
        return full if self.scale == "full" else ci

    # -- clusters ------------------------------------------------------------------------------
    def cluster(self, topology: Any, name: Optional[str] = None, **kwargs: Any):
        """Starts a cluster whose artifacts live in this scenario's folder;
        stopped by :meth:`close`."""
        from omnirelay.harness.cluster import Cluster

        options = {"seed": self.seed, **self._cluster_kwargs, **kwargs}
        sub = self.artifacts_dir if not self.clusters and name is None else \
            self.artifacts_dir / (name or f"cluster-{len(self.clusters) + 1}")
        cluster = Cluster(topology, sub, **options)
        self.clusters.append(cluster)
        cluster.start()
        self.note(f"cluster {cluster.topology.name}: " + ", ".join(
            f"{n.name}={n.admin}" for n in cluster.nodes.values()))
        return cluster

    def snapshot(self, label: str, cluster: Any = None) -> Dict[str, MetricsSnapshot]:
        cluster = cluster or (self.clusters[-1] if self.clusters else None)
        if cluster is None:
            raise RuntimeError("snapshot(): no cluster started in this scenario")
        return cluster.snapshot_metrics(label)

    def save_json(self, relative: str, data: Any) -> Path:
        path = self.artifacts_dir / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=2, sort_keys=True, default=str))
        return path

    def golden(self, data: Any, name: str, **kwargs: Any) -> None:
        """:func:`assert_golden` with this scenario's golden folder and update flag;
        the compared document is also saved under ``snapshots/``."""
        self.save_json(f"snapshots/{name}", data)
        assert_golden(data, name, golden_dir=self.golden_dir, update=self.update_golden, **kwargs)

    # -- waiting ----------------------------------------------------------------------------------
    @staticmethod
    def eventually(predicate: Callable[[], Any], within_s: float, interval_s: float = 0.1,
                   message: str = "") -> Any:
        """Polls ``predicate`` until truthy (returned) or ``within_s`` passes (AssertionError)."""
        deadline = time.monotonic() + within_s
        last: Any = None
        while True:
            try:
                last = predicate()
                if last:
                    return last
            except (AssertionError, OSError) as error:
                last = error
            if time.monotonic() >= deadline:
                raise AssertionError(f"not true within {within_s:g}s: {message or predicate!r} (last: {last!r})")
            time.sleep(interval_s)

    # -- end ------------------------------------------------------------------------------------------
    def close(self, error: Optional[BaseException] = None) -> str:
        if error is not None and not self.failed:
            self.failed = True
        if error is not None:
            self.error = "".join(traceback.format_exception_only(type(error), error)).strip()
        for cluster in reversed(self.clusters):
            try:
                cluster.stop()
            except Exception as stop_error:  # teardown goes on; recorded
                self._log("cluster.stop_failed", str(stop_error))
        verdict = self.verdict
        (self.artifacts_dir / "verdict.json").write_text(json.dumps({
            "scenario": self.name, "verdict": verdict, "error": self.error, "scale": self.scale,
            "seed": self.seed, "duration_s": round(time.time() - self.started_at, 3),
            "steps": [{"kind": s.kind, "text": s.text, "status": s.status, "duration_s": round(s.duration_s, 3),
                       "error": s.error} for s in self.steps],
        }, indent=2))
        self._log("verdict", verdict, error=self.error)
        return verdict

    @property
    def verdict(self) -> str:
        return "FAIL" if self.failed or any(s.status == "failed" for s in self.steps) else "PASS"

    def report(self) -> str:
        lines = [s.line() for s in self.steps]
        lines.append(f"verdict: {self.verdict}" + (f" ({self.error})" if self.error and self.failed else ""))
        return "\n".join(lines)


# -- metric assertions ------------------------------------------------------------------------------

def _select(snapshots: Union[MetricsSnapshot, Mapping[str, MetricsSnapshot]],
            node: Optional[str]) -> List[MetricsSnapshot]:
    if isinstance(snapshots, MetricsSnapshot):
        return [snapshots]
    if node is not None:
        return [snapshots[node]]
    return list(snapshots.values())


def _compare(what: str, value: float, at_least: Optional[float], at_most: Optional[float],
             equals: Optional[float]) -> float:
    if equals is not None and value != equals:
        raise AssertionError(f"{what} = {value:g}, expected == {equals:g}")
    if at_least is not None and value < at_least:
        raise AssertionError(f"{what} = {value:g}, expected >= {at_least:g}")
    if at_most is not None and value > at_most:
        raise AssertionError(f"{what} = {value:g}, expected <= {at_most:g}")
    return value


def counter_delta(before: Union[MetricsSnapshot, Mapping[str, MetricsSnapshot]],
                  after: Union[MetricsSnapshot, Mapping[str, MetricsSnapshot]], name: str,
                  node: Optional[str] = None, **labels: str) -> float:
    """Increase of counter ``name`` between two snapshots (of one node, or
    summed over every node present in ``after``)."""
    if isinstance(after, MetricsSnapshot):
        assert isinstance(before, MetricsSnapshot)
        return delta(before, after, name, **labels)
    nodes = [node] if node is not None else list(after)
    total = 0.0
    for n in nodes:
        prior = before.get(n) if isinstance(before, Mapping) else before
        total += delta(prior or MetricsSnapshot(node=n), after[n], name, **labels)
    return total


def expect_counter_delta(before: Any, after: Any, name: str, *, node: Optional[str] = None,
                         at_least: Optional[float] = None, at_most: Optional[float] = None,
                         equals: Optional[float] = None, **labels: str) -> float:
    value = counter_delta(before, after, name, node=node, **labels)
    where = f"{node}:" if node else ""
    return _compare(f"increase of {where}{name}{labels or ''}", value, at_least, at_most, equals)


def expect_gauge(snapshots: Any, name: str, *, node: Optional[str] = None, at_least: Optional[float] = None,
                 at_most: Optional[float] = None, equals: Optional[float] = None, **labels: str) -> float:
    value = sum(s.value(name, **labels) for s in _select(snapshots, node))
    return _compare(f"{node + ':' if node else ''}{name}{labels or ''}", value, at_least, at_most, equals)


def expect_percentile(snapshots: Any, name: str, q: float, *, node: Optional[str] = None,
                      at_least: Optional[float] = None, at_most: Optional[float] = None, **labels: str) -> float:
    from omnirelay.harness.metrics import quantile_from_buckets

    selected = _select(snapshots, node)
    if len(selected) == 1:
        value = selected[0].percentile(name, q, **labels)
    else:
        # Sum buckets across nodes: the cluster-wide distribution.
        acc: Dict[float, float] = {}
        for snap in selected:
            for bound, count in snap.buckets(name, **labels):
                acc[bound] = acc.get(bound, 0.0) + count
        value = quantile_from_buckets(q, sorted(acc.items()))
    return _compare(f"p{q * 100:g} of {name}{labels or ''}", value, at_least, at_most, None)


# -- operation history (Jepsen) ---------------------------------------------------------------------------

TIMEOUT_ERRORS: tuple = (TimeoutError, socket.timeout)


@dataclass
class Op:
    index: int
    process: str
    f: str
    value: Any = None
    type: str = "invoke"      # invoke -> ok | fail | info
    error: Optional[str] = None
    result: Any = None
    invoked_at: float = 0.0
    completed_at: Optional[float] = None

    @property
    def latency_ms(self) -> Optional[float]:
        return None if self.completed_at is None else (self.completed_at - self.invoked_at) * 1000

    def ok(self, result: Any = None) -> "Op":
        return self._complete("ok", result=result)

    def fail(self, error: Any) -> "Op":
        return self._complete("fail", error=error)

    def info(self, error: Any) -> "Op":
        return self._complete("info", error=error)

    def _complete(self, kind: str, result: Any = None, error: Any = None) -> "Op":
        if self.type != "invoke":
            raise RuntimeError(f"op {self.index} already completed as {self.type}")
        self.type, self.result, self.completed_at = kind, result, time.time()
        self.error = None if error is None else _error_name(error)
        return self


def _error_name(error: Any) -> str:
    if isinstance(error, str):
        return error
    name = getattr(error, "name", None)  # omnirelay.errors.* carry the status name
    if isinstance(name, str) and name.isupper():
        return name
    return type(error).__name__


class History:
    """Thread-safe record of operations; every invoke ends ok, fail or info.

    ``classify(exception) -> "fail" | "info"`` decides unknown outcomes; by
    default timeouts and DEADLINE_EXCEEDED are ``info`` (the call may have
    happened), everything else ``fail``.
    """

    def __init__(self, classify: Optional[Callable[[BaseException], str]] = None) -> None:
        self.ops: List[Op] = []
        self._lock = threading.Lock()
        self._classify = classify or self.default_classify

    @staticmethod
    def default_classify(error: BaseException) -> str:
        if isinstance(error, TIMEOUT_ERRORS) or _error_name(error) == "DEADLINE_EXCEEDED":
            return "info"
        return "fail"

    def invoke(self, process: str, f: str, value: Any = None) -> Op:
        with self._lock:
            op = Op(len(self.ops), str(process), f, value, invoked_at=time.time())
            self.ops.append(op)
        return op

    @contextlib.contextmanager
    def op(self, process: str, f: str, value: Any = None) -> Iterator[Op]:
        """``with history.op("client-1", "echo") as op: op.ok(call())``; an
        exception completes it as fail/info (and propagates)."""
        op = self.invoke(process, f, value)
        try:
            yield op
        except BaseException as error:
            if op.type == "invoke":
                op._complete(self._classify(error), error=error)
            raise
        else:
            if op.type == "invoke":
                op.ok()

    def call(self, process: str, f: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Op:
        """Runs ``fn`` and records its outcome; never raises the call's exception."""
        op = self.invoke(process, f, args[0] if len(args) == 1 else (args or None))
        try:
            op.ok(fn(*args, **kwargs))
        except Exception as error:
            op._complete(self._classify(error), error=error)
        return op

    # -- checkers ----------------------------------------------------------------------------------
    def completed(self) -> List[Op]:
        return [o for o in self.ops if o.type != "invoke"]

    def counts(self) -> Dict[str, int]:
        counts = collections.Counter(o.type for o in self.ops)
        return {k: counts.get(k, 0) for k in ("ok", "fail", "info", "invoke")}

    def errors(self) -> Dict[str, int]:
        return dict(collections.Counter(o.error for o in self.ops if o.error))

    def assert_no_error(self, *names: str) -> None:
        seen = {n: c for n, c in self.errors().items() if n in names}
        if seen:
            raise AssertionError(f"history has forbidden errors {seen} (all: {self.errors()})")

    def assert_only_errors(self, allowed: Iterable[str]) -> None:
        allowed = set(allowed)
        extra = {n: c for n, c in self.errors().items() if n not in allowed}
        if extra:
            raise AssertionError(f"history has errors outside {sorted(allowed)}: {extra}")

    def assert_all_completed(self) -> None:
        pending = [o.index for o in self.ops if o.type == "invoke"]
        if pending:
            raise AssertionError(f"{len(pending)} operation(s) never completed: {pending[:10]}")

    def assert_counts(self, *, ok_at_least: Optional[int] = None, fail_at_most: Optional[int] = None,
                      info_at_most: Optional[int] = None) -> Dict[str, int]:
        c = self.counts()
        if ok_at_least is not None and c["ok"] < ok_at_least:
            raise AssertionError(f"ok = {c['ok']}, expected >= {ok_at_least} ({c}, errors {self.errors()})")
        if fail_at_most is not None and c["fail"] > fail_at_most:
            raise AssertionError(f"fail = {c['fail']}, expected <= {fail_at_most} ({self.errors()})")
        if info_at_most is not None and c["info"] > info_at_most:
            raise AssertionError(f"info = {c['info']}, expected <= {info_at_most} ({self.errors()})")
        return c

    def save(self, path: Union[str, Path]) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w") as f:
            for o in self.ops:
                f.write(json.dumps({**asdict(o), "latency_ms": o.latency_ms}, default=str) + "\n")
        return path


# -- golden files --------------------------------------------------------------------------------------------

def update_golden_requested() -> bool:
    return os.environ.get(UPDATE_GOLDEN_ENV, "").lower() in ("1", "true", "yes")


def _redact(data: Any, keys: Sequence[str]) -> Any:
    if isinstance(data, Mapping):
        return {k: ("<redacted>" if k in keys else _redact(v, keys)) for k, v in data.items()}
    if isinstance(data, list):
        return [_redact(v, keys) for v in data]
    return data


def canonical_json(data: Any, redact: Sequence[str] = ()) -> str:
    return json.dumps(_redact(data, redact), indent=2, sort_keys=True, default=str) + "\n"


def default_golden_dir() -> Path:
    env = os.environ.get("OMNIRELAY_GOLDEN_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent.parent / "tests" / "golden"


def assert_golden(data: Any, name: str, *, golden_dir: Union[str, Path, None] = None,
                  update: Optional[bool] = None, redact: Sequence[str] = ()) -> Path:
    """Compares ``data`` (as canonical JSON: sorted keys, 2-space indent, keys in
    ``redact`` replaced at any depth) with the golden file ``name``.

    Update mode (``update=True``, or ``OMNIRELAY_UPDATE_GOLDEN=1`` /
    ``pytest --update-golden`` when ``update`` is None) rewrites the file
    instead. A missing golden file fails unless updating.
    """
    path = Path(golden_dir or default_golden_dir()) / name
    text = canonical_json(data, redact)
    updating = update_golden_requested() if update is None else update
    if updating:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path
    if not path.exists():
        raise AssertionError(f"golden file {path} does not exist; create it with {UPDATE_GOLDEN_ENV}=1 "
                             f"(or pytest --update-golden)")
    expected = path.read_text()
    if expected != text:
        diff = "".join(difflib.unified_diff(expected.splitlines(True), text.splitlines(True),
                                            fromfile=f"golden/{name}", tofile="actual"))
        raise AssertionError(f"snapshot differs from golden file {path} "
                             f"(update with {UPDATE_GOLDEN_ENV}=1 or pytest --update-golden):\n{diff}")
    return path


# -- running scenario modules without pytest --------------------------------------------------------------------

def scenario_dirs() -> List[Path]:
    dirs = [Path(p) for p in os.environ.get("OMNIRELAY_SCENARIO_PATH", "").split(os.pathsep) if p]
    repo_dir = Path(__file__).resolve().parent.parent.parent / "scenarios"
    if repo_dir.is_dir():
        dirs.append(repo_dir)
    installed = Path(__file__).resolve().parent / "scenarios"  # shipped in the wheel
    if installed.is_dir():
        dirs.append(installed)
    dirs.append(Path.cwd() / "scenarios")
    # From the repository root the checkout's folder and ./scenarios are one
    # folder: keep each once, in order, so listings show each scenario once.
    unique: List[Path] = []
    for directory in dirs:
        if directory.resolve() not in (seen.resolve() for seen in unique):
            unique.append(directory)
    return unique


def find_scenario(name: str, search: Sequence[Path] = ()) -> Path:
    path = Path(name)
    if path.suffix == ".py" and path.is_file():
        return path
    tried = []
    for top in [*search, *scenario_dirs()]:
        # Suites in subfolders (scenarios/hyperscale/) are found by name too.
        subfolders = sorted(p for p in Path(top).glob("*") if p.is_dir() and not p.name.startswith(("_", ".")))
        for directory in [Path(top), *subfolders]:
            for candidate in (f"{name}.py", f"test_{name}.py", f"{name.replace('-', '_')}.py",
                              f"test_{name.replace('-', '_')}.py"):
                tried.append(str(directory / candidate))
                if (directory / candidate).is_file():
                    return directory / candidate
    raise FileNotFoundError(f"scenario {name!r} not found (tried {', '.join(tried)})")


def load_scenario(path: Path) -> Callable[[Scenario], None]:
    module_name = f"omnirelay_scenario_{path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    fn = getattr(module, "scenario", None)
    if not callable(fn):
        raise AttributeError(f"{path} defines no `scenario(s)` function")
    return fn


def run_scenario(fn: Callable[[Scenario], None], name: str, artifacts_dir: Union[str, Path], **kwargs: Any
                 ) -> Scenario:
    """Runs ``fn`` in a fresh :class:`Scenario`; always closes it (clusters
    stopped, verdict written). Returns the scenario; check ``.verdict``."""
    s = Scenario(name, artifacts_dir, **kwargs)
    try:
        fn(s)
    except BaseException as error:
        s.close(error)
        if isinstance(error, KeyboardInterrupt):
            raise
    else:
        s.close()
    return s


__all__ = [
    "History",
    "Op",
    "Scenario",
    "Step",
    "UPDATE_GOLDEN_ENV",
    "assert_golden",
    "canonical_json",
    "counter_delta",
    "expect_counter_delta",
    "expect_gauge",
    "expect_percentile",
    "find_scenario",
    "load_scenario",
    "run_scenario",
]
