"""The Parquet parser's memory: the peak resident memory a process gains while it reads a
Parquet body into batches (``modelapp/parquet.py``), as a multiple of the body's size;
numbers read whole and a chunk at a time (``SMSERVE_CHUNK_KB``), and a table with text.
pyarrow allocates outside Python's allocator, so this measures the process's high-water
mark (``VmHWM``, reset before the parse), not ``tracemalloc``. Run by hand:

    .venv/bin/python bench/parquet.py
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
MB = 2**20

# name -> (content, body MB, SMSERVE_CHUNK_KB)
CASES = {
    "numbers, 4 columns, whole": ("numbers", 48, 1 << 20),
    "numbers, 4 columns, 8 MB chunks": ("numbers", 48, 8192),
    "text and numbers, 6 columns, whole": ("table", 6, 8192),
}


def body(content: str, size_mb: int) -> bytes:
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    if content == "numbers":
        rows = size_mb * MB // 32  # random floats barely compress: 8 bytes a field
        frame = pd.DataFrame(rng.random((rows, 4)), columns=list("abcd"))
    else:
        rows = size_mb * MB // 12
        frame = pd.DataFrame(
            {
                "plan": rng.choice(["basic", "pro", "enterprise"], rows),
                "country": rng.choice([f"C{i}" for i in range(50)], rows),
                "tenure": rng.integers(1, 72, rows).astype(float),
                "spend": rng.random(rows),
                "calls": rng.poisson(1.5, rows).astype(float),
                "payment": rng.choice(["card", "invoice", "paypal"], rows),
            }
        )
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()


def high_water() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM")


def measure(name: str) -> None:
    """In this process: the body, then the parse with the peak reset just before."""
    import django

    django.setup()
    import pyarrow.parquet  # noqa: F401  (its import is no part of the parse)

    from modelapp.parquet import read_parquet

    content, size_mb, _ = CASES[name]
    data = body(content, size_mb)
    import gc

    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    start = high_water()
    batch = read_parquet(data)
    records = 0
    if batch.chunks is not None:
        for part in batch.chunks:  # each chunk freed before the next, as predict() does
            records += len(part)
    else:
        records = len(batch)
    gained = high_water() - start
    print(
        f"{name:38s} body {len(data) / MB:6.1f} MB  records {records:>9,d}  "
        f"peak +{gained / MB:7.1f} MB = {gained / len(data):4.1f} x body"
    )


def main() -> None:
    if len(sys.argv) > 1:
        measure(sys.argv[1])
        return
    for name, (_, _, chunk_kb) in CASES.items():
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "smserve.settings",
            "PYTHONPATH": str(HERE),
            "SMSERVE_CHUNK_KB": str(chunk_kb),
            "SAGEMAKER_MAX_PAYLOAD_IN_MB": "0",
        }
        subprocess.run([sys.executable, __file__, name], env=env, cwd=HERE, check=True)


if __name__ == "__main__":
    main()
