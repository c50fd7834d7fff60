"""Render bench/results/*.json as the README's results table (between the results markers).

`python bench/report.py` rewrites the table; `--check` fails when the README disagrees with the JSON.
"""

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
README = ROOT / "README.md"
sys.path.insert(0, str(ROOT))  # run as a script: make the repository's `bench` package importable
from bench.labelled_data import DEFAULT_NAME, DEFAULT_TITLE  # noqa: E402  (a result that names no data is BANKING77's)

START, END = "<!-- results:start -->", "<!-- results:end -->"

Row = tuple[str, str, str, str]  # what, measured, target, file


def _ingest(r: dict) -> list[Row]:
    return [
        (
            f"Ingest + validate {r['rows']:,} synthetic tickets",
            f"{r['rows_per_s']:,} rows/s ({r['seconds']} s), peak {r['peak_rss_mb']:,} MB; "
            f"{r['accepted']:,} accepted, {r['quarantined']:,} quarantined",
            ">= 150,000 rows/s, memory bounded",
            "ingest.json",
        )
    ]


def _title(r: dict) -> str:
    """The data a model benchmark ran on (`bench/labelled_data.py`); results written before it named its data are
    BANKING77's."""
    return r.get("dataset", {}).get("title", DEFAULT_TITLE)


def _intent(r: dict, file: str) -> list[Row]:
    encoder = r["variants"]["encoder_alone_torch"]
    banking77 = _title(r) == DEFAULT_TITLE
    confidence = r.get("precision_confidence", 0.0)  # results written before the bound chose at the point estimate
    rows = [
        (
            f"Intent classifier on {_title(r)} test, as served ({r['serving_variant']} ONNX of {r['base_model'].split('/')[-1]} as "
            f"DistilBERT, {r['profile']['name']} profile, {len(r['readers']) + 1} readers fused)",
            f"accuracy {r['accuracy']:.4f}, macro-F1 {r['macro_f1']:.4f} (head alone {encoder['accuracy']:.4f}); "
            f"trained in {r['build_seconds'] / 60:.1f} min, of which fine-tuning {r['train_seconds'] / 60:.1f}",
            ">= 0.940 accuracy and macro-F1, <= 30 min on 2 cores" if banking77 else "",
            file,
        ),
        (
            "Its operating point: the threshold chosen on validation for 97% precision"
            + (f" (bounded at {confidence:.0%} confidence)" if confidence else "")
            + ", on test",
            f"coverage {r['coverage_at_097']:.1%} at precision {r['precision_at_097']:.1%}"
            + (
                f" ({unbounded['coverage_at_097']:.1%} at {unbounded['precision_at_097']:.1%} unbounded)"
                if (unbounded := r["variants"].get("thresholds_at_validation_precision"))
                else ""
            ),
            ">= 90% coverage at >= 96.5% precision" if banking77 else "",
            file,
        ),
    ]
    for name, label in (("tfidf_logreg", "peer: TF-IDF + logistic regression"), ("rasa_diet", "peer: Rasa 3.6 DIETClassifier")):
        peer = r["peers"][name]
        if peer is None:  # --skip-rasa
            continue
        rows.append(
            (
                label,
                f"accuracy {peer['accuracy']:.4f}, macro-F1 {peer['macro_f1']:.4f}, trained in {peer['train_seconds']:.0f} s",
                "",
                file,
            )
        )
    return rows


def _long_tail(r: dict, file: str) -> list[Row]:
    tail = r["models"]["long_tail"]["buckets"]
    measured = (
        f"macro-F1 {tail['10']['macro_f1']:.4f} on the 10-example intents, {tail['5']['macro_f1']:.4f} on the 5-example ones"
        f" (accuracy {tail['10']['accuracy']:.4f}, {tail['5']['accuracy']:.4f}); untouched macro-F1 {tail['untouched']['macro_f1']:.4f},"
        f" accuracy {tail['untouched']['accuracy']:.4f} (the rare intents' messages land on them)"
    )
    if "full_data" in r["models"]:
        full = r["models"]["full_data"]["buckets"]["untouched"]["macro_f1"]
        measured += f"; {full:.4f} from the full-data model"
    what = (
        f"Long-tail {_title(r)} ({tail['10']['intents']} intents cut to 10 examples, {tail['5']['intents']} to 5,"
        f" seed {r['seed']}), {r['profile']['name']} profile, scored on test"
    )
    return [(what, measured, ">= 0.80 (10), >= 0.70 (5); untouched intents lose <= 0.005", file)]


def _open_intent(r: dict, file: str) -> list[Row]:
    rows = []
    for ratio in r["ratios"]:
        adb = ratio["anchors"].get("ADB (AAAI 2021)")
        msp = ratio["msp_same_model"]
        measured = (
            f"accuracy {ratio['accuracy']:.4f}, macro-F1 {ratio['macro_f1']:.4f}; known accuracy {ratio['known_accuracy']:.4f},"
            f" unknown recall {ratio['unknown_recall']:.4f} (mean of {len(ratio['seeds'])} seeds); MSP on the same models"
            f" {msp['accuracy']:.4f}, {msp['macro_f1']:.4f}"
        )
        quantile = ratio["runs"][0].get("protocol", {}).get("quantile")
        version = ratio["runs"][0].get("protocol", {}).get("detector_version", 2)
        reads = " on the fine-tuned and the pretrained encoder" if version >= 3 else ""
        scores = "scores" if version >= 3 else "distances"
        detector = "" if quantile is None else f", detector{reads} at the validation {scores}' {quantile} quantile"
        device = f", fine-tuned on {r['fine_tuned_on']}" if r.get("fine_tuned_on", "cpu") != "cpu" else ""
        known = f"{ratio['known_ratio']:.0%} of intents known ({r['profile']['name']} profile, {r['variant']}{detector}{device})"
        target = "no published figure on this data"
        if adb is not None:
            target = f"above ADB: accuracy {adb['accuracy']:.4f}, macro-F1 {adb['macro_f1']:.4f}"
        rows.append((f"Unknown intents, {_title(r)} with {known}", measured, target, file))
    return rows


def _kb(r: dict) -> list[Row]:
    rows = []
    for name, label, target in (
        ("hybrid", "Knowledge-base retrieval, hybrid (the bot's), StackFAQ", "NDCG@10 >= 0.97, MAP >= 0.96, MRR >= 0.97, p50 <= 10 ms"),
        ("bm25", "peer: BM25 (tantivy), StackFAQ", ""),
        ("dense_title", "peer: dense all-MiniLM-L6-v2 over questions, StackFAQ", ""),
    ):
        m = r[name]
        measured = f"NDCG@10 {m['ndcg@10']:.4f}, MAP {m['map']:.4f}, MRR {m['mrr']:.4f}, recall@5 {m['recall@5']:.4f}"
        measured += f", p50 {m['p50_query_ms']:.1f} ms"
        rows.append((label, measured, target, "kb_stackfaq.json"))
    return rows


def _serve(r: dict) -> list[Row]:
    targets = {
        "noop": "the framework's floor",
        "classify": "p50 <= 5 ms and <= noop + 3 ms, p99 <= 20 ms, rps >= noop / 2, p50 < rasa_parse",
        "chat": "p50 <= 60 ms",
        "rasa_parse": "peer: Rasa DIET /model/parse",
    }
    rows = []
    for name, target in targets.items():
        m = r.get(name)
        if m is None:
            continue
        single = f"p50 {m['p50_ms']} ms, p99 {m['p99_ms']} ms at c=1" if m["p50_ms"] is not None else "no request completed at c=1"
        loaded = f"{m['rps_c32']:,} req/s at c=32" + (f" ({m['timeouts_c32']} timed out)" if m.get("timeouts_c32") else "")
        rows.append((f"Serving `{name}` over HTTP (wrk)", f"{single}; {loaded}", target, "serve_latency.json"))
    return rows


def _pipeline(r: dict) -> list[Row]:
    stages = ", ".join(f"{name} {seconds / 60:.1f}" for name, seconds in r["stages"].items())
    measured = f"{r['total_seconds'] / 60:.1f} min ({stages} min); classifier accuracy {r['classifier']['test_accuracy']:.4f}"
    measured += " on the snapshot's own test split"
    return [(f"The whole pipeline on BANKING77, {r['profile']} profile, empty store", measured, "<= 30 min on 2 cores", "pipeline.json")]


def _demo(r: dict) -> list[Row]:
    phases = ", ".join(f"{name} {seconds / 60:.1f}" for name, seconds in r["phases"].items())
    measured = f"{r['total_seconds'] / 60:.1f} min ({phases} min); the served bot answered ({r['served_reply']['route']})"
    return [("`make demo` on a fresh clone, installs included, no package caches", measured, "<= 20 min on 2 cores", "demo.json")]


def _cli(r: dict) -> list[Row]:
    m = r["median_seconds"]
    measured = (
        f"median of {r['repetitions']}: ephemeral Prefect API {m['ephemeral']} s; background server: first command {m['first']} s "
        f"(starts it), later commands {m['warm']} s; importing the flow alone {m['import_only']} s"
    )
    return [("`supportflow ingest` of a 3-row CSV, a new process each time", measured, "later commands start no server", "cli.json")]


def _service_imports(r: dict) -> list[Row]:
    training_only = set(r["training_only_modules"])
    before = r.get("before", {})
    rows = []
    for name, m in r["services"].items():
        loaded = [module for module in m["startup_heavy_modules"] if module in training_only]
        measured = (
            f"module {m['import_seconds_median']} s, {m['rss_mb']:,} MB; with its start-up's imports"
            f" {m['startup_import_seconds_median']} s, {m['startup_rss_mb']:,} MB; training-only packages: {', '.join(loaded) or 'none'}"
        )
        if name in before.get("services", {}):
            b = before["services"][name]
            was = [module for module in b["startup_heavy_modules"] if module in training_only]
            measured += f" (at {before['commit']}: {b['startup_import_seconds_median']} s, {b['startup_rss_mb']:,} MB;"
            measured += f" {', '.join(was) or 'none'})"
        what = f"Importing the {name} service (`{m['module']}`) in a fresh interpreter, median of {r['runs']}"
        rows.append((what, measured, "no training, orchestration or validation package", "service_imports.json"))
    return rows


def _active_learning(r: dict) -> list[Row]:
    target = r["target"]
    reached = target["queue_labels_to_reach"]
    measured = (
        f"queue {r['accuracy_queue'][-1]:.4f}, random {r['accuracy_random'][-1]:.4f} with {r['labels'][-1]:,} labels"
        f" (mean of {len(r['seeds'])} seeds); the queue reached random's final {target['random_final_accuracy']:.4f} with"
        + (f" {reached:,} labels ({target['queue_share_of_random_labels']:.0%} of random's)" if reached else "out reaching it")
    )
    what = (
        f"Active learning on BANKING77: the review queue's pick vs random, from {r['labels'][0]:,} labels in rounds of {r['batch']}"
        " (frozen MiniLM embeddings + logistic regression, scored on test)"
    )
    return [(what, measured, "random's final accuracy with <= 60% of its labels", "active_learning.json")]


def _soak(r: dict) -> list[Row]:
    rows = []
    for count in (2, 1):
        figures = r.get(f"replicas_{count}")
        if figures is None:
            continue
        measured = (
            f"{figures['requests']:,} turns in {figures['duration_s'] / 60:.0f} min at c={figures['connections']}: "
            f"{figures['errors']} errors, p50 {figures['p50_ms']:.0f} ms, p99 {figures['p99_ms']:.0f} ms, {figures['rps']:.1f} turns/s"
        )
        if count == 2 and "throughput_ratio" in r:
            measured += f"; {r['throughput_ratio']:.2f}x one replica"
        target = "0 errors, p99 <= 250 ms; 2 replicas >= 1.6x one" if count == 2 else "the baseline"
        what = f"Soak: multi-turn conversations through HAProxy, {count} replica{'s' if count > 1 else ''}"
        rows.append((what, measured, target, "soak.json"))
    return rows


def _resolution(r: dict, file: str) -> list[Row]:
    measured = (
        f"answered right {r['answered_right_rate']:.1%}, wrong {r['answered_wrong_rate']:.1%}, clarified {r['clarified_rate']:.1%},"
        f" handed off {r['handed_off_rate']:.1%} of {r['n']:,} messages ({r['source']}; classifier v{r['classifier_version']})"
    )
    if r.get("offers"):  # below the threshold the bot offered a choice; the outcome counted is the reply to the choice
        measured += f"; {r['offers']:,} unsure messages offered a choice, {r['right_after_offer']:,} of them then answered right"
    if r.get("slot_questions"):  # the desk's form asked a slot question first; the outcome counted is the reply to the answer
        measured += f"; {r['slot_questions']:,} asked a slot question first, {r['right_after_slot']:,} of them then answered right"
    if outside := r.get("outside_catalogue"):  # labelled with intents the desk has no article for: a handoff is right
        measured += (
            f"; of them {outside['n']:,} outside the catalogue: {outside['handed_off']:,} handed off,"
            f" {outside['answered_wrong']:,} answered wrongly"
        )
    # `supportflow evaluate` writes resolution_<desk>.json; a copy kept beside it names what differs after the desk.
    variant = file.removesuffix(".json").removeprefix(f"resolution_{r['workspace']}").strip("_").replace("_", " ")
    return [
        (
            f"The served bot, desk `{r['workspace']}`{f' ({variant})' if variant else ''}: each test message as a new conversation"
            " through `/chat`",
            measured,
            ">= 90% right, <= 2% wrong",
            file,
        )
    ]


def _unknown_questions(r: dict, file: str) -> list[Row]:
    known, outside = r["known"], r["outside_catalogue"]
    held = len(r["held_out"])
    what = (
        f"Questions outside the catalogue, desk `{r['workspace']}`: {held} of {held + r['known_intents']} intents held out"
        f" (seed {r['seed']}), {r['profile']} profile, through `/chat`"
    )
    measured = (
        f"the held-out intents' {outside['n']:,} messages: handed off {outside['handed_off_rate']:.1%}, answered wrongly"
        f" {outside['answered_wrong_rate']:.1%}; the known intents' {known['n']:,}: right {known['answered_right_rate']:.1%},"
        f" wrong {known['answered_wrong_rate']:.1%}, handed off {known['handed_off_rate']:.1%}"
    )
    return [(what, measured, "every held-out question handed off", file)]


RENDERERS: dict[str, Callable[[dict], list[Row]]] = {
    "ingest.json": _ingest,
    "kb_stackfaq.json": _kb,
    "serve_latency.json": _serve,
    "pipeline.json": _pipeline,
    "demo.json": _demo,
    "cli.json": _cli,
    "service_imports.json": _service_imports,
    "active_learning.json": _active_learning,
    "soak.json": _soak,
}
# The model benchmarks write <benchmark>_<data>.json, one per data set they ran on (BANKING77 first).
PER_DATA: dict[str, Callable[[dict, str], list[Row]]] = {"intent": _intent, "long_tail": _long_tail, "open_intent": _open_intent}


def _per_data(benchmark: str) -> list[tuple[Path, dict]]:
    """A benchmark's own result file for each data set, not the copies kept beside it under another suffix
    (`long_tail_banking77_logit_adjusted.json`): its name is the one the benchmark gives the data it records."""
    found = []
    for path in RESULTS.glob(f"{benchmark}_*.json"):
        result = json.loads(path.read_text())
        if path.name == f"{benchmark}_{result.get('dataset', {}).get('name', DEFAULT_NAME)}.json":
            found.append((path, result))
    return sorted(found, key=lambda found: (found[0].name != f"{benchmark}_{DEFAULT_NAME}.json", found[0].name))


def table() -> str:
    rows: list[Row] = []
    for name, render in RENDERERS.items():
        path = RESULTS / name
        if path.exists():
            rows.extend(render(json.loads(path.read_text())))
        if name == "ingest.json":  # the model benchmarks sit after ingest, in a pipeline's order
            for benchmark, render_one in PER_DATA.items():
                for found, result in _per_data(benchmark):
                    rows.extend(render_one(result, found.name))
    for path in sorted(RESULTS.glob("resolution_*.json")):  # one per desk
        rows.extend(_resolution(json.loads(path.read_text()), path.name))
    for path in sorted(RESULTS.glob("unknown_questions_*.json")):  # one per desk
        rows.extend(_unknown_questions(json.loads(path.read_text()), path.name))
    lines = ["| what | measured | target | result file |", "|---|---|---|---|"]
    lines += [f"| {what} | {measured} | {target} | `bench/results/{file}` |" for what, measured, target, file in rows]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    readme = README.read_text()
    before, rest = readme.split(START, 1)
    _, after = rest.split(END, 1)
    updated = f"{before}{START}\n{table()}\n{END}{after}"
    if args.check:
        if updated != readme:
            print("README results table differs from bench/results; run python bench/report.py", file=sys.stderr)
            return 1
        return 0
    README.write_text(updated)
    return 0


if __name__ == "__main__":
    sys.exit(main())
