"""The parsers' memory: the ``tracemalloc`` peak of parsing a body, and of parsing it and
preparing the model's input (``to_input``), as a multiple of the body's size, for every
format and kind of content; and the numeric CSV fast path's speed. Run by hand:

    .venv/bin/python bench/parsers.py                     # this tree only
    .venv/bin/python bench/parsers.py --before /tmp/base  # and another tree, side by side

``--before`` names a checkout of other code (``git worktree add --detach /tmp/base
main``): both trees are measured in the same run, each in its own process, with the same
bodies and models. The speed figures are medians of CPU time over repeated parses by the
two trees' fast paths loaded in this one process, called in alternation; the ratio is this
tree's over the other's.
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import os
import statistics
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent

# name -> (media type, model, body line(s)); a body repeats its record to the size asked.
CONTENTS = {
    "csv numeric 1,2": ("text/csv", "num2", "csv", b"1,2\n"),
    "csv numeric floats": ("text/csv", "num2", "csv", b"0.3183098861837907,2.5\n"),
    "csv with gaps 1,": ("text/csv", "num2", "csv", b"1,\n"),
    "csv with gaps ,2.5": ("text/csv", "num2", "csv", b",2.5\n"),
    "csv with text a,1": ("text/csv", "table2", "csv", b"a,1\n"),
    "csv with text mixed": ("text/csv", "table2", "csv", b"pro,12.5\nbasic,\n"),
    "json arrays [[1],..]": ("application/json", "num1", "json-rows", b"[1]"),
    "json arrays [[1,2],..]": ("application/json", "num2", "json-rows", b"[1, 2]"),
    "json instances": ("application/json", "num2", "json-instances", b"[1.5,null]"),
    "json flat list": ("application/json", "num1", "json-rows", b"1"),
    "json records": ("application/json", "num2", "json-rows", b'{"a":1,"b":2}'),
    "jsonl scalars 1": ("application/jsonlines", "num1", "lines", b"1"),
    "jsonl arrays [1,null]": ("application/jsonlines", "num2", "lines", b"[1,null]"),
    "jsonl objects": ("application/jsonlines", "num2", "lines", b'{"a":1,"b":null}'),
    "npy float64": ("application/x-npy", "num2", "npy", "<f8"),
    "npy uint8": ("application/x-npy", "num2", "npy", "|u1"),
}


def body(kind: str, record: bytes | str, size: int) -> bytes:
    import numpy as np

    if kind == "npy":
        buffer = io.BytesIO()
        dtype = np.dtype(record)
        np.save(buffer, np.ones((size // (2 * dtype.itemsize), 2), dtype))
        return buffer.getvalue()
    if kind == "csv":
        return record * (size // len(record))
    if kind == "lines":
        return (record + b"\n") * (size // (len(record) + 1))
    items = b",".join([record] * (size // (len(record) + 1)))
    if record == b"1":  # a flat list: one value per record of a one-feature model
        return b"[" + items + b"]"
    if kind == "json-instances":
        return b'{"instances": [' + items + b"]}"
    return b"[" + items + b"]"


def models() -> dict:
    """A numeric model of two named features, one of one, and a table model of a
    category and a number; all accept missing values."""
    import numpy as np
    import pandas as pd
    from sklearn.ensemble import HistGradientBoostingClassifier

    from modelapp.metadata import Feature
    from modelapp.predictors import SklearnPredictor
    from modelapp.training.encoding import prepare

    rng = np.random.default_rng(0)
    y = np.arange(200) % 2
    num = pd.DataFrame({"a": rng.random(200), "b": rng.random(200)})
    one = HistGradientBoostingClassifier(max_iter=5).fit(num[["a"]], y)
    two = HistGradientBoostingClassifier(max_iter=5).fit(num, y)
    frame = pd.DataFrame(
        {"c": rng.choice(["a", "pro", "basic"], 200).astype(object), "x": num["a"]}
    )
    features = [Feature(name="c", kind="categorical"), Feature(name="x")]
    table, _ = prepare(
        HistGradientBoostingClassifier(max_iter=5),
        features,
        named=True,
        has_missing=True,
    )
    table.fit(frame, y)
    return {
        "num1": SklearnPredictor(one),
        "num2": SklearnPredictor(two),
        "table2": SklearnPredictor(table),
    }


def peaks(parser, media: str, data: bytes, predictor) -> tuple[float, float, str]:
    """Peak bytes of parse alone, and of parse + input preparation (None: refused)."""
    gc.collect()
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        try:
            batch = parser.parse(io.BytesIO(data), media)
        except Exception as exc:  # a refusal is a figure too
            return tracemalloc.get_traced_memory()[1], None, type(exc).__name__
        parsed = tracemalloc.get_traced_memory()[1]
        try:
            predictor.to_input(batch)
        except Exception as exc:
            return parsed, None, type(exc).__name__
        return parsed, tracemalloc.get_traced_memory()[1], ""
    finally:
        tracemalloc.stop()


def speed(parser, data: bytes, repeat: int) -> float:
    """Median CPU seconds of one parse."""
    times = []
    for _ in range(repeat):
        start = time.process_time()
        parser.parse_bytes(data, {})
        times.append(time.process_time() - start)
    return statistics.median(times)


def measure(size: int) -> dict:
    """This tree's figures (run inside the tree's own process)."""
    import django

    django.setup()
    from modelapp.parsers import CSVParser, JSONLinesParser, JSONParser, NPYParser

    parsers = {
        p.media_type: p() for p in (CSVParser, JSONParser, JSONLinesParser, NPYParser)
    }
    predictors = models()
    out = {}
    for name, (media, model, kind, record) in CONTENTS.items():
        data = body(kind, record, size)
        parsed, prepared, refused = peaks(
            parsers[media], media, data, predictors[model]
        )
        out[name] = {
            "bytes": len(data),
            "parse": parsed / len(data),
            "prepare": prepared / len(data) if prepared is not None else None,
            "refused": refused,
        }
    return out


def timing(before: Path | None, repeat: int) -> dict:
    """Median CPU ms of the numeric CSV fast path, this tree's and ``before``'s side
    by side in this process (its ``parsers.py`` loaded under another name: the fast
    path needs only ``Batch``, orjson and numpy), calls in alternation."""
    import importlib.util

    import django
    import numpy as np

    django.setup()
    from modelapp import parsers

    paths = {"after": parsers.parse_numeric_csv}
    if before is not None:
        spec = importlib.util.spec_from_file_location(
            "parsers_before", before / "modelapp" / "parsers.py"
        )
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        paths = {"before": module.parse_numeric_csv, **paths}
    rng = np.random.default_rng(1)
    out = {}
    for records, columns, digits in (
        (1, 20, 17),
        (1000, 20, 17),
        (20000, 20, 17),
        (200000, 2, 1),
    ):
        matrix = rng.standard_normal((records, columns)).round(digits).tolist()
        data = "".join(",".join(map(repr, row)) + "\n" for row in matrix).encode()
        times: dict[str, list[float]] = {label: [] for label in paths}
        rounds = max(5, repeat * 1000 // max(records, 1000))
        for _ in range(rounds):
            for label, parse in paths.items():
                start = time.process_time()
                parse(data, False)
                times[label].append(time.process_time() - start)
        name = f"{records:,} x {columns}, {len(data) / 1e6:.2f} MB"
        out[name] = {label: statistics.median(t) * 1000 for label, t in times.items()}
    return out


def child(root: Path, what: str, arg: int) -> dict:
    code = (
        "import json, os, sys; sys.path.insert(0, sys.argv[1]); "
        "os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'smserve.settings'); "
        "sys.argv = sys.argv[:1] + sys.argv[2:]; "
        f"sys.path.insert(0, {str(HERE / 'bench')!r}); import parsers as bench; "
        f"print(json.dumps(bench.{what}(int(sys.argv[1]))))"
    )
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, "-c", code, str(root), str(arg)],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def ratio(value: float | None) -> str:
    return "refused" if value is None else f"{value:.1f}x"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, help="another checkout to compare with")
    parser.add_argument("--mb", type=float, default=2.0, help="body size in MB")
    parser.add_argument("--repeat", type=int, default=200, help="timing repeats")
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "smserve.settings")
    size = int(args.mb * 1024 * 1024)
    trees = {"after": HERE}
    if args.before:
        trees = {"before": args.before.resolve(), "after": HERE}
    figures = {label: child(root, "measure", size) for label, root in trees.items()}
    print(f"tracemalloc peak / body size, bodies of ~{args.mb:g} MB")
    head = " | ".join(f"{label}: parse | {label}: + input" for label in trees)
    print(f"| content | body MB | {head} |")
    print("|---|---|" + "---|---|" * len(trees))
    for name in CONTENTS:
        cells = []
        for label in trees:
            row = figures[label][name]
            cells.append(ratio(row["parse"]))
            prepared = row["prepare"]
            cells.append(
                ratio(prepared) if prepared is not None else f"({row['refused']})"
            )
        mb = figures["after"][name]["bytes"] / 1e6
        print(f"| {name} | {mb:.2f} | " + " | ".join(cells) + " |")
    speeds = timing(args.before.resolve() if args.before else None, args.repeat)
    print("\nnumeric CSV fast path, median CPU ms per parse (in-process, alternating)")
    labels = list(next(iter(speeds.values())))
    print(
        "| body | "
        + " | ".join(labels)
        + (" | after / before |" if args.before else " |")
    )
    print("|---|" + "---|" * (len(labels) + bool(args.before)))
    for name, row in speeds.items():
        cells = [f"{row[label]:.3f}" for label in labels]
        if args.before:
            cells.append(f"{row['after'] / row['before']:.2f}")
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
