"""Queue map at scale: insert latency and lookups with millions of rows.

python bench/map.py --rows 2000000 --dir /tmp/sendpost-bench/map
"""

from __future__ import annotations

import argparse
import random
import shutil
import time
import uuid
from pathlib import Path

from sendpost_agent.queuemap import HeaderState, MapReader, MapWriter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/sendpost-bench/map"))
    args = parser.parse_args()
    shutil.rmtree(args.dir, ignore_errors=True)
    path = args.dir / "queuemap.sqlite3"
    writer = MapWriter(path, 6 * 86400.0)
    writer.start_maintenance()
    samples = []
    started = time.perf_counter()
    for i in range(args.rows):
        t = time.perf_counter()
        writer.put(f"{i:012X}", uuid.UUID(int=i + 1), HeaderState.PRESENT)
        if i % 100 == 0:
            samples.append(time.perf_counter() - t)
    elapsed = time.perf_counter() - started
    writer.close()
    samples.sort()
    print(
        f"{args.rows} rows: {args.rows / elapsed:,.0f} puts/s; put p50"
        f" {samples[len(samples) // 2] * 1e6:.0f} us, p99"
        f" {samples[int(len(samples) * 0.99)] * 1e6:.0f} us, max {samples[-1] * 1e3:.1f} ms"
    )
    reader = MapReader(path)
    keys = [f"{random.randrange(args.rows):012X}" for _ in range(200_000)]
    started = time.perf_counter()
    for key in keys:
        reader.get(key)
    single = len(keys) / (time.perf_counter() - started)
    started = time.perf_counter()
    for i in range(0, len(keys), 500):
        reader.get_many(keys[i : i + 500])
    batched = len(keys) / (time.perf_counter() - started)
    started, row_id, scanned = time.perf_counter(), 0, 0
    while scanned < len(keys):  # what logwatch's MapWindow does: rows in insertion order
        rows = reader.scan(row_id, 1000)
        if not rows:
            break
        scanned, row_id = scanned + len(rows), rows[-1][0] + 1
    in_order = scanned / (time.perf_counter() - started)
    print(
        f"lookups: {single:,.0f}/s one by one, {batched:,.0f}/s in batches of 500;"
        f" {in_order:,.0f} rows/s read in insertion order; file"
        f" {path.stat().st_size / 1e6:.0f} MB"
    )


if __name__ == "__main__":
    main()
