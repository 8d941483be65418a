"""Converting a forest at start-up: smserve's tree converter (``tree_onnx``) against
skl2onnx, on the forest of issue 22 (RandomForestClassifier(100), default depth,
``make_classification(20000, 20, random_state=0)``, 276,724 nodes), in one process.

    .venv/bin/python bench/tree_convert.py [--cache PATH] [--repeats 5]

Prints, for each converter, the conversion's wall time, the graph's size, an ONNX Runtime
session's creation time (the engine's options: one thread, no arena) and predict's CPU time
for one record and for 1,000 (the two sessions interleaved); medians of ``--repeats``, and
whether both graphs answer identically. The forest is trained once and kept at ``--cache``.
Run by hand; not part of the test suite.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import joblib
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from modelapp.predictors import tree_onnx  # noqa: E402

N_FEATURES = 20


def forest(cache: Path) -> Any:
    if not cache.is_file():
        from sklearn.datasets import make_classification
        from sklearn.ensemble import RandomForestClassifier

        X, y = make_classification(20000, N_FEATURES, random_state=0)
        joblib.dump(RandomForestClassifier(100, random_state=0).fit(X, y), cache)
    return joblib.load(cache)


def median(
    fn: Callable[[], Any], repeats: int, clock: Any = time.perf_counter
) -> float:
    times = []
    for _ in range(repeats):
        started = clock()
        fn()
        times.append(clock() - started)
    return statistics.median(times)


def skl2onnx_graph(model: Any) -> bytes:
    from skl2onnx import to_onnx

    sample = np.zeros((1, N_FEATURES), np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = to_onnx(model, sample, options={id(model): {"zipmap": False}})
    return graph.SerializeToString()


def session(graph: bytes) -> Any:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.enable_cpu_mem_arena = options.enable_mem_pattern = False
    return onnxruntime.InferenceSession(
        graph, options, providers=["CPUExecutionProvider"]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--cache", type=Path, default=Path("/tmp/smserve-forest.joblib")
    )
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    model = forest(args.cache)
    converters = {
        "smserve tree_onnx": lambda: tree_onnx.to_onnx(model, N_FEATURES),
        "skl2onnx": lambda: skl2onnx_graph(model),
    }
    X = np.random.default_rng(1).standard_normal((1000, N_FEATURES)).astype(np.float32)
    rows: dict[str, dict[str, float]] = {}
    sessions, outputs = {}, {}
    for name, convert in converters.items():
        graph = convert()
        rows[name] = {
            "convert s": median(convert, args.repeats),
            "graph MB": len(graph) / 1e6,
            "session s": median(lambda g=graph: session(g), args.repeats),
        }
        sessions[name] = session(graph)
        outputs[name] = sessions[name].run(None, {"X": X})
    one: dict[str, list[float]] = {name: [] for name in sessions}
    batch: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(args.repeats):  # interleaved, so the machine's load falls on both
        for name, s in sessions.items():
            one[name].append(
                median(lambda s=s: s.run(None, {"X": X[:1]}), 200, time.process_time)
            )
            batch[name].append(
                median(lambda s=s: s.run(None, {"X": X}), 3, time.process_time)
            )
    for name in sessions:
        rows[name]["1 record ms"] = statistics.median(one[name]) * 1e3
        rows[name]["1,000 records ms"] = statistics.median(batch[name]) * 1e3
    columns = list(next(iter(rows.values())))
    print(f"{'':20}" + "".join(f"{c:>18}" for c in columns))
    for name, row in rows.items():
        print(f"{name:20}" + "".join(f"{row[c]:>18.4g}" for c in columns))
    ours, theirs = outputs.values()
    same = all(np.array_equal(a, b) for a, b in zip(ours, theirs, strict=True))
    print("identical outputs on 1,000 records:", same)


if __name__ == "__main__":
    main()
