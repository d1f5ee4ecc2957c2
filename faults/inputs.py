"""Areas ``configs`` and ``stores``: hypothesis over what users feed Amsha.

``configs``: config files (YAML, JSON, TOML) built from Amsha's own keys and random values,
then mutated: not UTF-8, NUL bytes, cut short, nested thousands deep, YAML anchor bombs and
aliases inside their own anchor, context cycles and self-references. Each must load, or
fail with a ``ConfigError`` (a session: any ``AmshaError``) within two seconds; a few go
through ``amsha config check``, which must exit 0 or 2 without a traceback.

``stores``: values (JSON and not: NaN, infinity, bytes, sets, tuples, non-string keys, lone
surrogates, huge integers, deep nesting, values inside themselves) as state values, run
records' inputs and run inputs, on every built-in store (memory, file, sqlite). A JSON
value must come back equal; any other must be refused with a typed error; nothing else."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import yaml
from _tally import Tally
from amsha import ExecutionSession
from amsha.config import load_config
from amsha.errors import AmshaError, ConfigError, InputError, StateError
from amsha.state import RunRecord
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import HypothesisDeprecationWarning

# Sessions draw run ids from ``random`` inside the probes; that is not a strategy's draw.
warnings.filterwarnings("ignore", category=HypothesisDeprecationWarning)
SETTINGS = settings(
    max_examples=int(os.environ.get("AMSHA_FAULT_EXAMPLES", "300")),
    deadline=None,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)
NAMES = st.sampled_from(["a", "b", "write", "research", "x y", "", "über", "1"])
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(st.characters(codec=None, exclude_categories=()), max_size=20)
)
JSONISH = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


# ---- configs ----------------------------------------------------------------------------


@st.composite
def configs(draw: st.DrawFn) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    if draw(st.booleans()):
        doc["provider"] = draw(
            st.sampled_from(["scripted", "openai", "nope"])
            | st.fixed_dictionaries(
                {"name": st.sampled_from(["scripted", "openai"])},
                optional={
                    "model": st.text(max_size=8),
                    "options": st.dictionaries(st.text(max_size=10), JSONISH, max_size=3),
                },
            )
        )
    agents = draw(st.lists(NAMES, max_size=3, unique=True))
    tasks = draw(st.lists(NAMES, max_size=4, unique=True))
    if agents or draw(st.booleans()):
        doc["agents"] = {
            a: draw(
                st.fixed_dictionaries(
                    {"role": st.text(max_size=5), "goal": st.text(max_size=5)},
                    optional={"tools": st.lists(NAMES, max_size=2)},
                )
            )
            for a in agents
        }
    if tasks:
        doc["tasks"] = {
            t: {
                "description": draw(st.text(max_size=10)),
                "agent": draw(st.sampled_from(agents or ["missing"])),
                "context": draw(st.lists(st.sampled_from(tasks), max_size=3)),
            }
            for t in tasks
        }
        if draw(st.booleans()):
            doc["pipeline"] = draw(st.lists(st.sampled_from([*tasks, "ghost"]), max_size=4))
    for key in draw(
        st.lists(st.sampled_from(["retry", "state", "observers", "runs", "llms", "tools", "extra"]), max_size=3)
    ):
        doc[key] = draw(JSONISH)
    return doc


def _deep_yaml(levels: int) -> bytes:
    return ("provider:\n  name: scripted\n  options:\n    deep: " + "[" * levels + "1" + "]" * levels + "\n").encode()


def _bomb(levels: int, width: int) -> bytes:
    lines = ["a0: &a0 [" + ", ".join(['"lol"'] * width) + "]"]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]")
    return ("provider:\n  name: scripted\n  options:\n" + "".join(f"    {x}\n" for x in lines)).encode()


@st.composite
def config_files(draw: st.DrawFn) -> tuple[str, bytes]:
    kind = draw(st.sampled_from(["yaml", "json", "toml", "deep", "bomb", "cycle", "bytes"]))
    if kind == "deep":
        return ".yaml", _deep_yaml(draw(st.integers(400, 3000)))
    if kind == "bomb":
        return ".yaml", _bomb(draw(st.integers(3, 9)), draw(st.integers(3, 9)))
    if kind == "cycle":
        return ".yaml", b"provider:\n  name: scripted\n  options:\n    loop: &x {a: [1, *x]}\n"
    if kind == "bytes":
        return draw(st.sampled_from([".yaml", ".json", ".toml"])), draw(st.binary(max_size=200))
    doc = draw(configs())
    if kind == "json":
        text = json.dumps(doc, default=str)
    elif kind == "yaml":
        text = yaml.safe_dump(json.loads(json.dumps(doc, default=str)), allow_unicode=True)
    else:
        text = "\n".join(f"{k} = {json.dumps(v, default=str)}" for k, v in doc.items() if not isinstance(v, dict))
    data = text.encode("utf-8", "surrogatepass")
    mutation = draw(st.sampled_from(["none", "nul", "latin1", "utf16", "cut"]))
    if mutation == "nul" and data:
        at = draw(st.integers(0, len(data)))
        data = data[:at] + b"\x00" + data[at:]
    elif mutation == "latin1":
        data = text.encode("latin-1", "replace") + b"\xe9\xff"
    elif mutation == "utf16":
        data = text.encode("utf-16", "surrogatepass")
    elif mutation == "cut" and data:
        data = data[: draw(st.integers(0, len(data)))]
    return (".yml" if kind == "yaml" else f".{kind}"), data


def configs_area() -> Tally:
    tally = Tally("configs")
    tmp = Path(tempfile.mkdtemp())
    os.chdir(tmp)
    counter = iter(range(10**9))

    @SETTINGS
    @given(config_files())
    def probe(case: tuple[str, bytes]) -> None:
        suffix, data = case
        path = tmp / f"c{next(counter)}{suffix}"
        path.write_bytes(data)
        started = time.perf_counter()
        try:
            load_config(path)
            ok, why = True, ""
        except ConfigError as exc:
            ok, why = str(path) in str(exc), f"ConfigError without the file: {str(exc)[:120]}"
        except BaseException as exc:
            ok, why = False, f"load_config raised {type(exc).__name__}: {str(exc)[:160]}"
        if ok:
            try:
                ExecutionSession(path).close()
            except AmshaError:
                pass
            except BaseException as exc:
                ok, why = False, f"ExecutionSession raised {type(exc).__name__}: {str(exc)[:160]}"
        took = time.perf_counter() - started
        if took > 2:
            ok, why = False, f"took {took:.1f}s"
        tally.check(ok, f"{suffix} {data[:60]!r}: {why}")

    probe()
    # A few through the CLI: exit 0 or 2, a one-line error, no traceback.
    samples = [
        (".yaml", _deep_yaml(2000)),
        (".yaml", _bomb(9, 9)),
        (".yaml", "provider: scripted\n# caf\xe9\n".encode("latin-1")),
        (".yaml", b"provider: scr\x00ipted\n"),
        (
            ".json",
            json.dumps(
                {
                    "agents": {"a": {"role": "r", "goal": "g"}},
                    "tasks": {"t": {"description": "d", "agent": "a", "context": ["t"]}},
                    "pipeline": ["t"],
                }
            ).encode(),
        ),
    ]
    for i, (suffix, data) in enumerate(samples):
        path = tmp / f"cli{i}{suffix}"
        path.write_bytes(data)
        proc = subprocess.run(
            [sys.executable, "-m", "amsha", "config", "check", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        ok = (
            proc.returncode in (0, 2)
            and "Traceback" not in proc.stderr
            and (proc.returncode == 0 or str(path) in proc.stderr or "error" in proc.stderr)
        )
        tally.check(ok, f"cli {data[:40]!r}: exit {proc.returncode} {proc.stderr[-200:]}")
    return tally


# ---- stores -----------------------------------------------------------------------------


def is_json(value: Any, depth: int = 0, above: tuple[int, ...] = ()) -> bool:
    """An oracle written apart from amsha's own check."""
    if value is None or isinstance(value, bool | str):
        return True
    if isinstance(value, int):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list | tuple | dict):
        if id(value) in above or depth >= 256:
            return False
        items = value.values() if isinstance(value, dict) else value
        if isinstance(value, dict) and not all(isinstance(k, str) for k in value):
            return False
        return all(is_json(v, depth + 1, (*above, id(value))) for v in items)
    return False


def _norm(value: Any, pairs: bool) -> Any:
    """Tuples as lists; with ``pairs``, two surrogate code points that form a pair as their
    one character (what a JSON text's escapes give back)."""
    if isinstance(value, str):
        return value.encode("utf-16", "surrogatepass").decode("utf-16", "surrogatepass") if pairs else value
    if isinstance(value, list | tuple):
        return [_norm(v, pairs) for v in value]
    if isinstance(value, dict):
        return {_norm(k, pairs): _norm(v, pairs) for k, v in value.items()}
    return value


def _same(got: Any, sent: Any) -> bool:
    return got == _norm(sent, False) or got == _norm(sent, True)


def _cycle() -> Any:
    value: list[Any] = [1]
    value.append({"again": value})
    return value


def _deep(levels: int) -> Any:
    value: Any = "leaf"
    for _ in range(levels):
        value = {"d": [value]}
    return value


ODD = st.sampled_from(
    [
        b"bytes",
        {1, 2},
        frozenset(),
        object(),
        1j,
        {1: "int key"},
        {(1,): "tuple key"},
        float("nan"),
        float("-inf"),
        _cycle(),
        _deep(140),
        _deep(600),
        "lone \ud800",
        "\udfff\ud800",
        "nul \x00",
        2**200,
        -0.0,
        (1, "t"),
    ]
)
VALUES = st.recursive(
    SCALARS | st.binary(max_size=4) | ODD,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.tuples(inner, inner)
        | st.dictionaries(st.text(max_size=6), inner, max_size=3)
        | st.dictionaries(st.integers(0, 3), inner, max_size=2)
    ),
    max_leaves=10,
)


def stores_area() -> Tally:
    from amsha.builtins.stores import FileStore, MemoryStore
    from amsha_sqlite.store import SqliteStore

    tally = Tally("stores")
    tmp = Path(tempfile.mkdtemp())
    stores = {"memory": MemoryStore(), "file": FileStore(tmp / "files"), "sqlite": SqliteStore(tmp / "s.db")}
    sessions = {
        name: ExecutionSession(
            {
                "state": {"name": name, "options": {} if name == "memory" else {"path": str(tmp / f"sess-{name}")}},
                "agents": {"a": {"role": "r", "goal": "g"}},
                "tasks": {"t": {"description": "say {topic}", "agent": "a"}},
            }
        )
        for name in stores
    }
    counter = iter(range(10**9))

    def judge(what: str, action: Any, check: Any, valid: bool) -> None:
        try:
            got = action()
        except (StateError, InputError) as exc:
            tally.check(not valid, f"{what}: refused a JSON value: {type(exc).__name__}: {str(exc)[:120]}")
            return
        except BaseException as exc:
            tally.check(False, f"{what}: untyped {type(exc).__name__}: {str(exc)[:160]}")
            return
        if not valid:
            tally.check(False, f"{what}: accepted a value that is not JSON")
            return
        tally.check(check(got), f"{what}: came back different")

    @SETTINGS
    @given(VALUES)
    def probe(value: Any) -> None:
        n = next(counter)
        valid = is_json(value)
        for name, store in stores.items():
            sid = f"s{n}"
            judge(
                f"{name} state {value!r:.80}",
                lambda store=store, sid=sid: (
                    store.put_state(sid, {"k": value}, expected_version=0),
                    store.get_state(sid),
                )[1],
                lambda snap: _same(snap.data, {"k": value}),
                valid,
            )
            rid = f"r{n}"
            judge(
                f"{name} record {value!r:.80}",
                lambda store=store, rid=rid: (store.put_run(RunRecord(rid, inputs={"k": value})), store.get_run(rid))[
                    1
                ],
                lambda record: _same(record.inputs, {"k": value}),
                valid,
            )
        session = sessions[("memory", "file", "sqlite")[n % 3]]

        def run() -> Any:
            handle = session.run(inputs={"topic": value})
            handle.result(timeout=30)
            return session.store.get_run(handle.run_id)

        judge(
            f"run input {value!r:.80}",
            run,
            lambda record: _same(record.inputs, {"topic": value}) and record.status == "SUCCEEDED",
            valid,
        )

    probe()
    observers_probe(tally, tmp)
    for session in sessions.values():
        session.close()
    leftovers = [p for p in tmp.rglob("*.tmp")]
    tally.check(not leftovers, f"the file store left {len(leftovers)} .tmp files")
    return tally


def observers_probe(tally: Tally, tmp: Path) -> None:
    """Any string Python can hold, streamed through every built-in observer (and the
    OpenTelemetry one): no observer fails, the run succeeds."""
    import io

    from amsha.builtins.observers import ConsoleObserver

    config = {
        "state": {"name": "file", "options": {"path": str(tmp / "obs-store")}},
        "observers": [
            {"name": "jsonl", "options": {"path": str(tmp / "obs.jsonl")}},
            {"name": "opentelemetry", "options": {"exporter": "memory", "capture_content": True}},
        ],
        "agents": {"a": {"role": "r", "goal": "g"}},
        "tasks": {"t": {"description": "echo {topic}", "agent": "a"}},
    }
    import logging

    warnings: list[str] = []

    class Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            warnings.append(record.getMessage())

    catch = Catch(logging.WARNING)
    logging.getLogger("amsha").addHandler(catch)
    with ExecutionSession(config, observers=[ConsoleObserver(file=io.StringIO())]) as session:

        @SETTINGS
        @given(st.text(st.characters(codec=None, exclude_categories=()), min_size=1, max_size=30))
        def probe(text: str) -> None:
            try:
                handle = session.run(inputs={"topic": text})
                events = list(handle.stream())
                result = handle.result(timeout=30)
                ok = result.status == "SUCCEEDED" and not [e for e in events if e.kind == "observer.error"]
                why = "an observer failed" if not ok else ""
            except BaseException as exc:
                ok, why = False, f"{type(exc).__name__}: {str(exc)[:160]}"
            tally.check(ok, f"observers with {text!r}: {why}")

        probe()
        drained = session.flush_observers(10)
        tally.check(drained, "the observers did not drain")
    logging.getLogger("amsha").removeHandler(catch)
    tally.check(not warnings, f"warnings: {warnings[:3]}")
    for line in (tmp / "obs.jsonl").read_bytes().splitlines():
        try:
            json.loads(line)
        except ValueError:
            tally.check(False, f"a jsonl line is not JSON: {line[:80]!r}")
            break


if __name__ == "__main__":
    area = sys.argv[1] if len(sys.argv) > 1 else "configs"
    (configs_area() if area == "configs" else stores_area()).report()
