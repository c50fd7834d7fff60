"""Ingest and validate 1,000,000 synthetic tickets, with a share of bad rows, and record the throughput.

The input file is generated in a child process first, so the peak memory recorded is that of the
ingest and validation alone. Writes bench/results/ingest.json.
"""

import argparse
import json
import multiprocessing
import os
import platform
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parent.parent
WORDS = [
    "card",
    "payment",
    "transfer",
    "account",
    "refund",
    "fee",
    "balance",
    "top",
    "up",
    "pending",
    "declined",
    "arrived",
    "exchange",
    "rate",
    "cash",
    "withdrawal",
    "pin",
    "blocked",
    "verify",
    "identity",
    "app",
    "phone",
    "wallet",
    "charge",
    "limit",
    "atm",
    "contactless",
    "statement",
    "beneficiary",
]


def generate(path: Path, rows: int, intents: list[str], seed: int = 7) -> dict[str, int]:
    """A CSV in the help-desk export shape, with PII and known shares of bad rows."""
    rng = np.random.default_rng(seed)
    words = np.array(WORDS)
    kind = rng.random(rows)
    bad = {"empty": 0.01, "whitespace": 0.005, "unknown_intent": 0.01, "wrong_fields": 0.002, "bad_utf8": 0.001, "too_long": 0.001}
    edges = np.cumsum(list(bad.values()))
    counts = dict.fromkeys(bad, 0)
    intent_ids = rng.integers(0, len(intents), rows)
    lengths = rng.integers(5, 20, rows)
    with path.open("wb") as handle:
        handle.write(b"text,intent,entities,response\n")
        for i in range(rows):
            text = " ".join(words[rng.integers(0, len(words), lengths[i])])
            if i % 10 == 0:
                text += f" contact me at user{i}@example.com or +44 20 7946 {i % 10000:04d}"
            intent = intents[intent_ids[i]]
            line = None
            which = int(np.searchsorted(edges, kind[i], side="right"))
            if which < len(bad):
                name = list(bad)[which]
                counts[name] += 1
                if name == "empty":
                    text = ""
                elif name == "whitespace":
                    text = "   "
                elif name == "unknown_intent":
                    intent = "not_an_intent"
                elif name == "wrong_fields":
                    line = f"{text},{intent},[],ok,EXTRA\n".encode()
                elif name == "bad_utf8":
                    line = f"{text} ".encode() + b"\xff\xfe," + intent.encode() + b",[],\n"
                elif name == "too_long":
                    text = "x" * 6000
            handle.write(line or f'"{text}",{intent},[],\n'.encode())
    return counts


def _generate_in_child(path: Path, rows: int, intents: list[str], queue: "multiprocessing.Queue[dict[str, int]]") -> None:
    queue.put(generate(path, rows, intents))


class PeakMemory:
    """Peak memory of this process and its worker processes together, sampled every 20 ms.

    Proportional set size: pages a forked worker shares with its parent are counted once, not twice.
    """

    def __init__(self) -> None:
        self.peak_mb = 0.0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        me = psutil.Process()
        while not self._done.is_set():
            try:
                rss = me.memory_full_info().pss + sum(child.memory_full_info().pss for child in me.children(recursive=True))
            except psutil.Error:
                continue
            self.peak_mb = max(self.peak_mb, rss / 2**20)
            self._done.wait(0.02)

    def stop(self) -> None:
        self._done.set()
        self._thread.join()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3, help="the median run is reported")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "ingest.json")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["SUPPORTFLOW_LAKE_URL"] = f"{tmp}/lake"
        os.environ["SUPPORTFLOW_GX_ROOT"] = f"{tmp}/gx"
        from supportflow.ingest.load import ingest_file
        from supportflow.lake import open_lake
        from supportflow.settings import Settings
        from supportflow.validate.catalogue import load_catalogue
        from supportflow.validate.snapshot import validate_lake

        settings = Settings()
        source = Path(tmp) / "tickets.csv"
        queue: multiprocessing.Queue[dict[str, int]] = multiprocessing.Queue()
        child = multiprocessing.Process(
            target=_generate_in_child, args=(source, args.rows, list(load_catalogue(settings.catalogue_file).intents), queue)
        )
        child.start()
        planted = queue.get()
        child.join()
        runs = []
        for repeat in range(args.repeats):
            settings = Settings(lake_url=f"{tmp}/lake-{repeat}", gx_root=Path(tmp) / f"gx-{repeat}")
            sampler = PeakMemory()
            start = time.perf_counter()
            lake = open_lake(settings)
            ingested = ingest_file(str(source), lake, settings, source="synthetic")
            ingest_seconds = time.perf_counter() - start
            manifest = validate_lake(lake, settings)
            seconds = time.perf_counter() - start
            sampler.stop()
            runs.append({"seconds": seconds, "ingest_seconds": ingest_seconds, "peak_rss_mb": sampler.peak_mb})
            print(f"run {repeat + 1}: {seconds:.2f} s ({args.rows / seconds:,.0f} rows/s)", flush=True)

    validation = manifest.validation
    median = sorted(runs, key=lambda run: run["seconds"])[len(runs) // 2]
    seconds, ingest_seconds = median["seconds"], median["ingest_seconds"]
    result = {
        "rows": args.rows,
        "seconds": round(seconds, 2),
        "rows_per_s": round(args.rows / seconds),
        "accepted": validation.accepted,
        "quarantined": ingested.quarantined + validation.quarantined,
        "peak_rss_mb": round(max(run["peak_rss_mb"] for run in runs)),
        "runs_seconds": [round(run["seconds"], 2) for run in runs],
        "ingest_seconds": round(ingest_seconds, 2),
        "validate_seconds": round(seconds - ingest_seconds, 2),
        "quarantined_at_ingest": ingested.quarantined,
        "quarantined_at_validate": validation.quarantined,
        "duplicates": ingested.duplicates,
        "by_rule": validation.by_rule,
        "planted_bad_rows": planted,
        "redactions": ingested.redactions,
        "balanced": ingested.rows_read == args.rows and validation.rows_read + ingested.quarantined + ingested.duplicates == args.rows,
        "batch_rows": settings.ingest_batch_rows,
        "workers": settings.workers,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
