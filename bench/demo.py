"""Time `make demo` as a new user meets it: a fresh clone, no virtual environments, no package caches.

Clones the committed HEAD into a scratch folder and runs, each timed on its own, `make install`
(the project's venv), `make rasa-venv` (Rasa 3.6 on Python 3.10) and `make demo` (the whole loop on the
quick profile, then the promoted bot served). pip's and uv's caches are switched off, so every package
is downloaded from PyPI again; torch comes from the machine's CPU wheel folder, as on any machine of
this kind. The served bot is asked one question, then stopped, and the clone is deleted.
Writes bench/results/demo.json. Target: at most 20 minutes on 2 cores, installs included.
"""

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
RESULT = ROOT / "bench" / "results" / "demo.json"
TARGET_SECONDS = 20 * 60
PHASES = ("install", "rasa-venv", "demo")


def no_caches(scratch: Path) -> dict[str, str]:
    """Every package from the index again; HOME stays, so pyenv's Python 3.10 is still found."""
    return {
        **os.environ,
        "PIP_NO_CACHE_DIR": "1",
        "UV_NO_CACHE": "1",
        "UV_CACHE_DIR": str(scratch / "uv-cache"),
        "XDG_CACHE_HOME": str(scratch / "xdg-cache"),
    }


def timed_make(clone: Path, target: str, env: dict[str, str], log: Path) -> float:
    started = time.perf_counter()
    with log.open("w") as out:
        done = subprocess.run(["make", target], cwd=clone, env=env, stdout=out, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"`make {target}` failed ({done.returncode}) after {seconds:.0f} s; see {log}")
    return seconds


def webchat_url(demo_log: str) -> str:
    found = re.search(r"webchat:\s+(http://\S+?)/\s", demo_log)
    if not found:
        raise SystemExit("the demo printed no webchat URL")
    return found.group(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output", type=Path, default=RESULT)
    parser.add_argument("--keep", action="store_true", help="keep the clone (about 6 GB) and its logs")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="supportflow-demo-"))
    clone = scratch / "supportflow"
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    subprocess.run(["git", "clone", "-q", "--no-hardlinks", str(ROOT), str(clone)], check=True)
    env = no_caches(scratch)
    seconds: dict[str, float] = {}
    try:
        for phase in PHASES:
            seconds[phase] = round(timed_make(clone, phase, env, scratch / f"{phase}.log"), 1)
            print(f"make {phase}: {seconds[phase]:.0f} s", flush=True)
        demo_log = (scratch / "demo.log").read_text()
        bot = webchat_url(demo_log)
        reply = httpx.post(f"{bot}/chat", json={"message": "my card still hasn't arrived"}, timeout=60)
        reply.raise_for_status()
        stages = {name: float(value) for name, value in re.findall(r"stage (\w+): ([\d.]+) s", demo_log)}
    finally:
        subprocess.run(["make", "stop"], cwd=clone, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    total = sum(seconds.values())
    result = {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared), Python {platform.python_version()}",
        "commit": commit,
        "total_seconds": round(total, 1),
        "phases": seconds,
        "pipeline_stages": stages,
        "target_seconds": TARGET_SECONDS,
        "served_reply": {"route": reply.json().get("route"), "intent": reply.json().get("intent")},
        "note": "a fresh clone, pip and uv caches off (every package downloaded again), torch from the local CPU wheel "
        "folder; the demo's quick training profile; Debian packages the tests need are not part of the demo",
    }
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
