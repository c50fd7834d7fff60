"""The `supportflow` command: runs the flows and prints what they produced and where to look.

Expected failures print one line that says what is wrong (in red on a terminal) and exit with status 2; the
user never sees a traceback for bad input. Commands that run flows share one background Prefect server
(supportflow/prefect_server.py) instead of starting Prefect's ephemeral one each time.
"""

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from supportflow import __version__
from supportflow.errors import SupportflowError
from supportflow.progress import bars

if TYPE_CHECKING:
    from pydantic import BaseModel

    from supportflow.pipeline import PipelineSummary
    from supportflow.release.bundle import Bundles
    from supportflow.release.stack import RecordedStack, Stack
    from supportflow.status import ProductionStatus


def _print_section(title: str, lines: Sequence[str]) -> None:
    print(f"{title}:")
    for line in lines:
        print(f"  {line}")


def _report(args: argparse.Namespace, title: str, reports: "BaseModel | Sequence[BaseModel]") -> None:
    """A command's report: its lines for a person, or with `--json` one JSON document for a program."""
    many = isinstance(reports, Sequence)
    if args.json:
        print(json.dumps([r.model_dump(mode="json") for r in reports] if many else reports.model_dump(mode="json"), indent=2))
    else:
        _print_section(title, [line for r in reports for line in r.lines()] if many else reports.lines())


def _print_kb_answers(question: str, k: int = 3) -> None:
    from supportflow.kb.build import open_knowledge_base
    from supportflow.settings import get_settings

    reply = open_knowledge_base(get_settings()).reply(question, k)
    print(f"  Q: {question}")
    for answer in reply.answers:
        print(f"    {answer.score:.3f}  {answer.title}  [{answer.doc_id}]")
    top = reply.answers[0] if reply.answers else None
    if reply.escalate or top is None:
        print(f"    -> the search alone would escalate: no passage scores above its threshold {reply.threshold:.3f}")
    else:
        print(f"    -> answer from {top.doc_id}: {top.body.split(chr(10))[0][:160]}")


def cmd_kb_index(args: argparse.Namespace) -> None:
    from flows.kb_index import kb_index

    _report(args, "kb_index", kb_index(args.sources or None))


def cmd_kb_changed(args: argparse.Namespace) -> None:
    from supportflow.kb.events import KB_CHANGED, emit_kb_changed
    from supportflow.settings import get_settings

    event_id = emit_kb_changed(get_settings(), args.sources)
    sources = ", ".join(args.sources) or "the configured sources"
    print(f"emitted {KB_CHANGED} ({event_id}): the kb-index-on-change deployment rebuilds from {sources}")


def cmd_kb_search(args: argparse.Namespace) -> None:
    _print_kb_answers(" ".join(args.question), args.k)


def cmd_train(args: argparse.Namespace) -> None:
    from flows.train import train

    _report(args, "train", train(profile=args.profile))


def cmd_rollback(args: argparse.Namespace) -> None:
    from supportflow.classifier.registry import rollback
    from supportflow.lake import open_lake
    from supportflow.release.promote import current_release, rollback_release
    from supportflow.settings import get_settings

    settings = get_settings()
    lake = open_lake(settings)
    if current_release(lake) is None:  # nothing released yet: only the registry's champion moves back
        before, after = rollback(settings)
        print(f"{settings.registered_model_name}: champion moved back from v{before} to v{after}")
        return
    replaced, restored = rollback_release(settings, lake)
    print(f"production rolled back from release {replaced.release_id} to {restored.release_id}:")
    print(f"  bundles {restored.bundles.classifier}, {restored.bundles.bot}")
    print(f"  @production and @champion on {settings.registered_model_name} v{restored.bundles.classifier_version}")


def cmd_ingest(args: argparse.Namespace) -> None:
    from flows.ingest import ingest
    from supportflow.settings import get_settings
    from supportflow.workspace import export_intent_field

    field = export_intent_field(get_settings(), args.intent_field_id)
    _report(args, "ingest", ingest(args.paths, source=args.source, fmt=args.format, encoding=args.encoding, zendesk_intent_field_id=field))


def cmd_validate(args: argparse.Namespace) -> None:
    from flows.validate import validate

    _report(args, "validate", validate())


def cmd_drift(args: argparse.Namespace) -> None:
    from flows.drift_monitor import drift_monitor

    _report(args, "drift monitor", drift_monitor(window_hours=args.hours, end=args.end, retrain=args.retrain))


def cmd_gaps(args: argparse.Namespace) -> None:
    from flows.knowledge_gaps import knowledge_gaps

    _report(args, "knowledge gaps", knowledge_gaps(window_hours=args.hours, end=args.end))


def cmd_review_queue(args: argparse.Namespace) -> None:
    from flows.review_queue import review_queue

    _report(args, "review queue", review_queue(window_hours=args.hours, end=args.end))


def _run_pipeline(args: argparse.Namespace) -> "PipelineSummary":
    from flows.pipeline import pipeline

    paths = args.paths or ([] if getattr(args, "no_ingest", False) else None)  # none given: the workspace's sources
    summary = pipeline(paths=paths, profile=args.profile)
    if getattr(args, "json", False):
        print(summary.model_dump_json(indent=2))
        return summary
    print("\nsupportflow pipeline finished")
    for title, lines in summary.sections().items():
        _print_section(title, lines)
    return summary


def cmd_pipeline(args: argparse.Namespace) -> None:
    _run_pipeline(args)


def cmd_demo(args: argparse.Namespace) -> None:
    from supportflow.settings import get_settings
    from supportflow.workspace import workspace

    args.paths = None
    summary = _run_pipeline(args)
    settings = get_settings()
    questions = workspace(settings).config.demo_questions
    if questions:
        print("the knowledge base searched alone with each demo question (the bot first answers from the article of the intent")
        print("the classifier recognises, as the conversation below shows):")
    for question in questions:
        _print_kb_answers(question)
    if not args.no_serve:
        stack = _serve_in_background()
        print("an example conversation through /chat, served by the production release:")
        _converse(stack, questions)
    print("where to look:")
    print(f"  lake:          {settings.lake_url}/ (tickets/, quarantine/, snapshots/, turns/, releases/)")
    print(f"  data docs:     {summary.snapshot.validation.data_docs}")
    print(f"  MLflow UI:     .venv/bin/mlflow ui --backend-store-uri {settings.mlflow_tracking_uri}, then http://127.0.0.1:5000")
    print(f"  kb index:      {settings.kb_dir}/ (MLflow experiment {settings.kb_experiment!r})")
    print(f"  bundles:       BENTOML_HOME={settings.bentoml_home} .venv/bin/bentoml list")
    if os.environ.get("PREFECT_API_URL"):  # the background server, or the user's own
        print(f"  Prefect UI:    {os.environ['PREFECT_API_URL'].removesuffix('/api')} (flow runs and their report artifacts)")
    else:
        print("  Prefect UI:    .venv/bin/prefect server start, then http://127.0.0.1:4200 (flow runs and their report artifacts)")
    if not args.no_serve:
        _print_stack(stack)
        _print_demo_agent(stack)
        print("the bot keeps serving in the background: `supportflow stop` (or `make stop`) ends it")


# What `serve --background` starts, detached: the foreground serve, recording its stack for `stop` and `status`.
SUPERVISOR = [sys.executable, "-m", "supportflow.cli", "serve", "--supervise"]


def _served_release() -> "tuple[Bundles | None, Path]":
    """What `serve` serves: the production release's bundles, else the Rasa project's own dialogue model."""
    from supportflow.lake import open_lake
    from supportflow.release.promote import current_release
    from supportflow.settings import get_settings

    settings = get_settings()
    production = current_release(open_lake(settings))
    model = settings.rasa_project_dir / "models" / "supportflow.tar.gz"
    if production is None and not model.exists():
        raise SupportflowError(f"no release and no dialogue model at {model}: run `supportflow demo` (or the pipeline) first")
    return (production.bundles if production else None), model


def _start_stack(record: bool) -> "Stack":
    from supportflow.release.stack import record_stack, start_stack, stop_recorded_stack
    from supportflow.settings import get_settings

    settings = get_settings()
    bundles, model = _served_release()
    stop_recorded_stack(settings)
    print("starting the classifier, Rasa, the action server and the bot (about a minute)...", flush=True)
    stack = start_stack(settings, settings.rasa_project_dir, model, settings.run_dir / "logs", bundles=bundles)
    if record:
        record_stack(settings, stack, os.getpid())
    return stack


def _serve_in_background() -> "RecordedStack":
    """The stack, served by a supervisor that outlives this command and starts again any service that ends."""
    from supportflow.release.stack import serve_in_background, stop_recorded_stack
    from supportflow.settings import get_settings

    settings = get_settings()
    _served_release()  # nothing to serve: say so here, not in the supervisor's log
    stop_recorded_stack(settings)
    print("starting the classifier, Rasa, the action server and the bot (about a minute)...", flush=True)
    return serve_in_background(settings, SUPERVISOR, settings.run_dir / "logs" / "supervisor.log")


def _print_stack(stack: "Stack | RecordedStack") -> None:
    from supportflow.settings import get_settings

    print(f"  webchat:       {stack.bot_url}/  (POST {stack.bot_url}/chat, Twilio webhook {stack.bot_url}/twilio)")
    print(f"  classifier:    {stack.classifier_url}/classify  (/metrics on both services needs the internal token)")
    print(f"  agent console: {stack.bot_url}/console  (agent API {stack.bot_url}/agent/handoffs)")
    print(f"  logs:          {get_settings().run_dir / 'logs'}/")


def _print_demo_agent(stack: "Stack | RecordedStack") -> None:
    """The credentials a newcomer signs in to the console with: the demo agent's, created on the first demo."""
    from supportflow.bot.agents import DEMO_AGENT, Agents, demo_agent_token
    from supportflow.settings import get_settings

    settings = get_settings()
    token = demo_agent_token(Agents(settings.handoff_db_url), settings.run_dir)
    if token is None:
        print(f"  console login: agent {DEMO_AGENT!r} exists, but its token was not kept by the demo: issue a new one with")
        print(f"                 `supportflow agent remove {DEMO_AGENT} && supportflow agent add {DEMO_AGENT}`")
    else:
        print(f"  console login: agent {DEMO_AGENT}, token {token}  (kept in {settings.run_dir}/)")
        print(f"                 ask for a person on {stack.bot_url}/ and the conversation waits for you in the console")


def _converse(stack: "Stack | RecordedStack", questions: Sequence[str]) -> None:
    """Each question as the first turn of a new conversation, the way a customer would ask it."""
    from supportflow.bot.client import BotConversation

    for message in questions:
        with BotConversation(stack.bot_url) as conversation:
            reply = conversation.send(message)
        print(f"  customer: {message}")
        for text in reply.replies or [reply.detail]:
            print(f"  bot ({reply.route}, {reply.intent}): {text}")


def _field_map(text: str | None) -> dict[str, str]:
    """`--field-map`: JSON, ticket field to column; none given, none."""
    if not text:
        return {}
    from supportflow.ingest.fields import field_map_problem

    try:
        field_map = json.loads(text)
    except json.JSONDecodeError as error:
        raise SupportflowError(f"--field-map is not JSON: {error}") from error
    if problem := field_map_problem(field_map):
        raise SupportflowError(f"--field-map: {problem}")
    return field_map


def cmd_evaluate(args: argparse.Namespace) -> None:
    from supportflow.release.resolution import (
        evaluate_bot,
        evaluate_production,
        labelled_export,
        log_resolution,
        results_file,
        snapshot_test_split,
    )
    from supportflow.settings import get_settings
    from supportflow.workspace import export_intent_field

    settings = get_settings()
    settings = settings.model_copy(update={"zendesk_intent_field_id": export_intent_field(settings, args.intent_field_id)})
    field_map = _field_map(args.field_map) or None
    examples = labelled_export(settings, args.file, args.format, field_map, args.encoding) if args.file else snapshot_test_split(settings)
    examples = examples.sample(args.limit, settings.snapshot_seed)
    notes = sys.stderr if args.json else sys.stdout  # with --json, stdout holds the report alone

    def starting() -> None:
        print("starting the production release on spare ports, against scratch stores (about a minute)...", file=notes, flush=True)

    if args.bot_url:
        replayed = evaluate_bot(settings, args.bot_url, examples)
    else:
        replayed = evaluate_production(settings, examples, on_start=starting)
    path = results_file(settings, replayed.report, replayed.release_id)
    run_id = log_resolution(settings, replayed.report, replayed.release_id, outcomes=replayed.outcomes)
    _report(args, "resolution", replayed.report)
    print(f"  figures: {path}", file=notes)
    print(f"  MLflow: run {run_id} in experiment {settings.resolution_experiment!r} (resolution/examples.csv: every message)", file=notes)


def cmd_serve(args: argparse.Namespace) -> None:
    """In the foreground (or as the background's supervisor, `--supervise`), this process keeps the stack serving:
    a service that ends is started again. `--background` leaves such a supervisor running and returns."""
    import contextlib
    import signal
    import threading

    from supportflow.release.stack import supervise
    from supportflow.settings import get_settings

    if args.background:
        recorded = _serve_in_background()
        print("supportflow is serving (a supervisor starts again any service that ends):")
        _print_stack(recorded)
        print("stop it with `supportflow stop` (or `make stop`)")
        return
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    stack = _start_stack(record=args.supervise)
    print("supportflow is serving:", flush=True)
    _print_stack(stack)
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C: the stack stops all the same
        supervise(get_settings(), stack, done, recorded=args.supervise)


def cmd_stop(args: argparse.Namespace) -> None:
    from supportflow.prefect_server import stop_server
    from supportflow.release.stack import stop_recorded_stack
    from supportflow.settings import get_settings

    settings = get_settings()
    stopped = stop_recorded_stack(settings)
    if stop_server(settings):
        stopped.append("prefect server")
    print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")


def _print_status(status: "ProductionStatus") -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    def dim(text: str | None) -> Text:
        return Text(text or "", style="dim")

    table = Table(title="supportflow in production", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    release = status.release
    if release is None:
        table.add_row("release", dim("nothing released yet"))
    else:
        replaced = f", replacing {release.previous_release}" if release.previous_release else ""
        table.add_row("release", f"{release.release_id}, {release.note} {release.promoted_at:%Y-%m-%d %H:%M} UTC{replaced}")
        table.add_row("bundles", f"{release.bundles.classifier}\n{release.bundles.bot}")
    classifier = status.classifier
    aliases = (("production", classifier.production), ("champion", classifier.champion))
    versions = ", ".join(f"@{alias} v{version}" for alias, version in aliases if version)
    table.add_row("classifier", versions or dim(classifier.note))
    kb = status.knowledge_base
    table.add_row("knowledge base", f"build {kb.build} ({kb.backend})" if kb.build else dim(kb.note))
    dialogue = status.dialogue
    model = Text(f"{dialogue.model} ({dialogue.source})") + (Text(f"\n{dialogue.note}", style="red") if dialogue.note else Text())
    table.add_row("dialogue model", model if dialogue.model else dim("none built yet"))
    if status.supervisor:
        table.add_row("supervisor", f"pid {status.supervisor}: starts again any service that ends (log: supervisor.log)")
    for service in status.services:
        health = Text("up", style="green") if service.healthy else Text(f"not answering at {service.health_url}", style="red")
        table.add_row(service.name, Text(f"{service.url}  ") + health)
    if not status.services:
        table.add_row("served", dim("nothing serving: `supportflow serve --background`"))
    prefect = status.prefect
    idle = dim("no server up: the next command that runs a flow starts one")
    table.add_row("Prefect", f"{prefect.ui_url} ({prefect.source})" if prefect.ui_url else idle)
    Console(highlight=False).print(table)


def cmd_init(args: argparse.Namespace) -> None:
    if args.from_tickets is None:
        _init_skeleton(args)
        return
    from supportflow.ingest.readers import detect_format
    from supportflow.settings import PROJECT_ROOT, get_settings
    from supportflow.workspace import scaffold

    folder = Path(args.folder).resolve()
    settings = get_settings()
    export = Path(args.from_tickets).resolve()
    made = scaffold(folder, export, args.format, _field_map(args.field_map), settings, args.encoding or "utf-8", args.intent_field_id)
    intents = len(made.intents.counts)
    print(f"workspace {made.workspace.config.name} at {folder}:")
    print(f"  supportflow.yaml   the desk: its ticket source (data/{Path(args.from_tickets).name}), articles, the bot's texts")
    print(f"  intents.yaml       {intents} intents with their ticket counts")
    print(f"  kb/                {intents} draft articles, one per intent: write them, then remove `draft: true`")
    for intent, others in made.intents.respelt.items():
        spelt = ", ".join(f"{spelling!r} ({count})" for spelling, count in others.items())
        alike = "differ only in case, spacing, '_' or '-'"
        print(f"  one intent, {intent!r} ({made.intents.counts[intent]} tickets in all): its labels {spelt} {alike}")
    for intent, label in made.intents.aliases.items():
        print(f"  {label!r} is the intent {intent!r}: Rasa reads '/' as a retrieval intent; intents.yaml keeps the label as its alias")
    if made.below_minimum:
        thin = ", ".join(f"{intent} ({count})" for intent, count in made.below_minimum.items())
        print(
            f"  {len(made.below_minimum)} intents have fewer tickets than the {settings.min_examples_per_intent} the data contract "
            f"asks for, and will not be learned until they have more: {thin}"
        )
    if made.unlabelled:
        print(f"  {made.unlabelled} tickets have a text but no intent: they will be ingested unlabelled, and nothing is learned from them")
        source = made.workspace.config.tickets[0]
        if (source.format or detect_format(str(export))) == "zendesk" and source.zendesk_intent_field_id is None:
            hint = "a Zendesk ticket's intent is its tag `intent:<name>` or a custom field"
            print(f"  {hint}: if one holds it, run init again with --intent-field-id ID")
    print("next:")
    print(f"  edit the texts in {folder / 'supportflow.yaml'} and write the articles in {folder / 'kb'}/")
    shown = folder.relative_to(PROJECT_ROOT) if folder.is_relative_to(PROJECT_ROOT) else folder  # make runs in the project
    print(f"  make demo WORKSPACE={shown}    (or: supportflow --workspace {folder} demo)")


def _init_skeleton(args: argparse.Namespace) -> None:
    import csv

    from supportflow.validate.catalogue import load_catalogue
    from supportflow.workspace import skeleton

    options = {
        "--format": args.format,
        "--field-map": args.field_map,
        "--encoding": args.encoding,
        "--intent-field-id": args.intent_field_id,
    }
    if given := [option for option, value in options.items() if value]:
        raise SupportflowError(f"{', '.join(given)}: only with --from-tickets (the export they describe)")
    folder = Path(args.folder).resolve()
    desk = skeleton(folder)
    intents = load_catalogue(desk.catalogue_file).intents
    ((tickets, _),) = desk.ticket_files()
    with open(tickets[0], encoding="utf-8", newline="") as handle:
        rows = sum(1 for _ in csv.DictReader(handle))
    print(f"workspace {desk.config.name} at {folder}: a small working skeleton, to make your desk's own")
    print("  supportflow.yaml   the desk: its ticket source, articles, and the bot's texts (the defaults, each with when it is said)")
    print(f"  intents.yaml       {len(intents)} intents any desk has: {', '.join(intents)}")
    print(f"  data/tickets.csv   {rows} labelled example tickets, enough of each intent for the data contract")
    print(f"  kb/                {len(intents)} articles, one per intent")
    print("next:")
    print(f"  supportflow --workspace {args.folder} demo    the whole loop on the examples, then the bot serves")
    print(f"  supportflow --workspace {args.folder} chat    talk to it")
    print(f"  then make it your desk's: edit the texts in {folder / 'supportflow.yaml'}; replace the intents, tickets and")
    print("  articles with yours and run demo again (from a labelled export: supportflow init NEW_DIR --from-tickets EXPORT)")


def cmd_status(args: argparse.Namespace) -> None:
    from supportflow.settings import get_settings
    from supportflow.status import production_status

    status = production_status(get_settings())
    if args.json:
        print(status.model_dump_json(indent=2))
    else:
        _print_status(status)


def cmd_chat(args: argparse.Namespace) -> None:
    from rich.console import Console
    from rich.text import Text

    from supportflow.bot.client import BotConversation, served_bot_url
    from supportflow.settings import get_settings

    console = Console(highlight=False, soft_wrap=True)
    with BotConversation(args.url or served_bot_url(get_settings())) as conversation:
        conversation.check()
        console.print(Text(f"chatting with {conversation.url} in a new conversation; /quit or Ctrl-D ends", style="dim"))
        prompt = "you: " if sys.stdin.isatty() else ""  # piped input: only the bot's side is printed
        while True:
            try:
                message = input(prompt).strip()
            except (EOFError, KeyboardInterrupt):
                print()
                break
            if message == "/quit":
                break
            if not message:
                continue
            reply = conversation.send(message)
            if reply.detail and not reply.replies:  # the bot refused the message (too long, malformed)
                console.print(Text("bot: ", style="bold") + Text(reply.detail, style="yellow"))
                continue
            for text in reply.replies or ["(no reply)"]:
                console.print(Text("bot: ", style="bold") + Text(text) + Text(f"  ({reply.route}, {reply.intent})", style="dim"))


def cmd_agent(args: argparse.Namespace) -> None:
    from supportflow.bot.agents import Agents
    from supportflow.settings import get_settings

    agents = Agents(get_settings().handoff_db_url)
    if args.agent_command == "add":
        token = agents.add(args.name)
        print(f"agent {args.name} added. Their token, shown this once (the agent API wants `Authorization: Bearer <token>`):")
        print(token)
    elif args.agent_command == "remove":
        agents.remove(args.name)
        print(f"agent {args.name} removed: their token no longer opens the agent API")
    else:
        registered = agents.registered()
        for agent in registered:
            print(f"{agent.name}  (added {agent.created_at:%Y-%m-%d %H:%M} UTC)")
        if not registered:
            print("no agent is registered: `supportflow agent add NAME` (a bot reachable beyond this machine will not start without one)")


def _use_prefect_server() -> None:
    from supportflow.prefect_server import use_background_server
    from supportflow.settings import get_settings

    def starting() -> None:
        print("starting a Prefect server in the background, once: later commands reuse it...", file=sys.stderr, flush=True)

    used = use_background_server(get_settings(), on_start=starting)
    if used is not None and used[1]:
        print(f"Prefect server up: UI at {used[0].ui_url} (`supportflow stop` ends it)", file=sys.stderr, flush=True)


def _print_error(message: str) -> None:
    """Red on a terminal; plain where stderr is not one or NO_COLOR is set (rich decides both)."""
    from rich.console import Console
    from rich.text import Text

    Console(stderr=True, highlight=False).print(Text(f"supportflow: error: {message}", style="red"), soft_wrap=True)


INTENT_FIELD_HELP = "a Zendesk export's custom field that holds the intent (tags `intent:<name>` are read without it)"


def _encoding(name: str) -> str:
    """An unknown encoding is a usage error, found before any flow starts."""
    from supportflow.ingest.decoding import codec_name

    try:
        return codec_name(name)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="supportflow", description=__doc__)
    parser.add_argument("--version", action="version", version=f"supportflow {__version__}")
    parser.add_argument("--workspace", help="the desk's workspace folder (default: SUPPORTFLOW_WORKSPACE, else examples/banking77)")
    commands = parser.add_subparsers(dest="command", required=True)
    init = commands.add_parser("init", help="a new desk's workspace: from a labelled ticket export, or a small working skeleton")
    init.add_argument("folder", help="the new workspace (a new or empty folder)")
    init.add_argument(
        "--from-tickets", metavar="EXPORT", help="a labelled ticket export (CSV, JSON Lines, Zendesk JSON); without it, a skeleton"
    )
    init.add_argument("--format", choices=["csv", "jsonl", "zendesk"], help="the export's format (default: from the file's suffix)")
    init.add_argument("--field-map", help='JSON, ticket field to column, e.g. \'{"text": "message", "intent": "category"}\'')
    init.add_argument("--encoding", type=_encoding, help="the export's text encoding, e.g. cp1252 (default: utf-8)")
    init.add_argument("--intent-field-id", type=int, metavar="ID", help=INTENT_FIELD_HELP)
    init.set_defaults(run=cmd_init)
    ingest = commands.add_parser("ingest", help="ingest ticket exports (CSV, JSONL, Zendesk JSON) into the lake")
    ingest.add_argument("paths", nargs="+")
    ingest.add_argument("--source", help="the source system's name (default: the file's name)")
    ingest.add_argument("--format", choices=["csv", "jsonl", "zendesk"], help="default: from the file's suffix")
    ingest.add_argument("--encoding", type=_encoding, default="utf-8", help="the files' text encoding, e.g. cp1252 (default: utf-8)")
    ingest.add_argument("--intent-field-id", type=int, metavar="ID", help=INTENT_FIELD_HELP + " (default: the workspace's)")
    ingest.add_argument("--json", action="store_true", help="print the report as JSON")
    ingest.set_defaults(run=cmd_ingest, prefect=True)
    validate = commands.add_parser("validate", help="validate the lake against the data contracts and cut a snapshot")
    validate.add_argument("--json", action="store_true", help="print the report as JSON")
    validate.set_defaults(run=cmd_validate, prefect=True)
    kb_index = commands.add_parser("kb-index", help="build the knowledge-base index from its sources and swap it in")
    kb_index.add_argument("sources", nargs="*", help="files and folders (default: SUPPORTFLOW_KB_SOURCES, else the workspace's kb)")
    kb_index.add_argument("--json", action="store_true", help="print the report as JSON")
    kb_index.set_defaults(run=cmd_kb_index, prefect=True)
    kb_changed = commands.add_parser("kb-changed", help="tell the Prefect server the KB sources changed (the on-change rebuild runs)")
    kb_changed.add_argument("sources", nargs="*", help="the changed files and folders (default: rebuild from SUPPORTFLOW_KB_SOURCES)")
    kb_changed.set_defaults(run=cmd_kb_changed)
    kb_search = commands.add_parser("kb-search", help="ask the served knowledge base a question")
    kb_search.add_argument("question", nargs="+")
    kb_search.add_argument("-k", type=int, default=3)
    kb_search.set_defaults(run=cmd_kb_search)
    train = commands.add_parser("train", help="fine-tune the intent classifier on the latest snapshot, register it, gate promotion")
    train.add_argument("--profile", choices=["quick", "full"], help="default: SUPPORTFLOW_TRAIN_PROFILE (quick)")
    train.add_argument("--json", action="store_true", help="print the report as JSON")
    train.set_defaults(run=cmd_train, prefect=True)
    commands.add_parser(
        "rollback", help="restore the previous release: its bundles, and @production and @champion on its model"
    ).set_defaults(run=cmd_rollback)
    drift = commands.add_parser("drift", help="compare the last window of the turn log with the served model's training")
    drift.add_argument("--hours", type=float, default=1.0, help="the window's length (default 1 hour)")
    drift.add_argument("--end", help="the window's end, ISO date-time (default now)")
    drift.add_argument("--retrain", action="store_true", help="on drift, run the pipeline on the lake's tickets and agents' labels")
    drift.add_argument("--json", action="store_true", help="print the report as JSON")
    drift.set_defaults(run=cmd_drift, prefect=True)
    gaps = commands.add_parser("gaps", help="the knowledge-gap report: questions the knowledge base failed, grouped by topic")
    gaps.add_argument("--hours", type=float, default=168.0, help="the window's length (default a week)")
    gaps.add_argument("--end", help="the window's end, ISO date-time (default now)")
    gaps.add_argument("--json", action="store_true", help="print the report as JSON")
    gaps.set_defaults(run=cmd_gaps, prefect=True)
    review = commands.add_parser("review-queue", help="rebuild the review queue: the bot-answered turns worth an agent's label")
    review.add_argument("--hours", type=float, default=168.0, help="the window's length (default a week)")
    review.add_argument("--end", help="the window's end, ISO date-time (default now)")
    review.add_argument("--json", action="store_true", help="print the queue as JSON")
    review.set_defaults(run=cmd_review_queue, prefect=True)
    demo = commands.add_parser("demo", help="run the whole loop on the workspace's desk, then serve the promoted bot")
    demo.add_argument("--no-serve", action="store_true", help="stop after the pipeline")
    demo.add_argument("--profile", choices=["quick", "full"], help="training profile (default: SUPPORTFLOW_TRAIN_PROFILE, quick)")
    demo.set_defaults(run=cmd_demo, prefect=True)
    run = commands.add_parser("pipeline", help="run the whole loop: ingest, validate, train, kb, dialogue, bundle, smoke test, promote")
    run.add_argument("paths", nargs="*", help="ticket exports to ingest first (none: the workspace's ticket sources)")
    run.add_argument("--no-ingest", action="store_true", help="ingest nothing: retrain on the lake's tickets and agents' labels")
    run.add_argument("--profile", choices=["quick", "full"], help="training profile (default: SUPPORTFLOW_TRAIN_PROFILE, quick)")
    run.add_argument("--json", action="store_true", help="print the report as JSON")
    run.set_defaults(run=cmd_pipeline, prefect=True)
    evaluate = commands.add_parser(
        "evaluate", help="replay labelled messages through the bot's /chat: answered right or wrong, clarified, handed off"
    )
    evaluate.add_argument("--file", metavar="EXPORT", help="a labelled export (CSV, JSON Lines, Zendesk JSON); default: the test split")
    evaluate.add_argument("--format", choices=["csv", "jsonl", "zendesk"], help="the export's format (default: from the file's suffix)")
    evaluate.add_argument("--field-map", help='JSON, ticket field to column, e.g. \'{"text": "message", "intent": "category"}\'')
    evaluate.add_argument("--encoding", type=_encoding, default="utf-8", help="the export's text encoding, e.g. cp1252 (default: utf-8)")
    evaluate.add_argument("--intent-field-id", type=int, metavar="ID", help=INTENT_FIELD_HELP + " (default: the workspace's)")
    evaluate.add_argument("--limit", type=int, default=0, metavar="N", help="a seeded sample of N messages (default: all)")
    evaluate.add_argument(
        "--bot-url",
        metavar="URL",
        help="evaluate this running bot (its turn log and handoff queue get the messages); "
        "default: the production release, started on spare ports against scratch stores",
    )
    evaluate.add_argument("--json", action="store_true", help="print the report as JSON")
    evaluate.set_defaults(run=cmd_evaluate)
    serve = commands.add_parser("serve", help="serve the bot locally: classifier, Rasa, action server, bot")
    serve.add_argument("--background", action="store_true", help="leave it running and return (stop with `supportflow stop`)")
    serve.add_argument("--supervise", action="store_true", help=argparse.SUPPRESS)  # what --background leaves running
    serve.set_defaults(run=cmd_serve)
    commands.add_parser("stop", help="stop the bot left serving in the background, and the background Prefect server").set_defaults(
        run=cmd_stop
    )
    status = commands.add_parser("status", help="what is in production: release, models, knowledge base, served URLs and their health")
    status.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    status.set_defaults(run=cmd_status)
    chat = commands.add_parser("chat", help="talk to the served bot in the terminal (/quit or Ctrl-D ends)")
    chat.add_argument("--url", help="the bot's address (default: the one `supportflow serve --background` left running)")
    chat.set_defaults(run=cmd_chat)
    agent = commands.add_parser("agent", help="the agents who may use the bot's agent API: add (prints their token once), list, remove")
    agent_commands = agent.add_subparsers(dest="agent_command", required=True)
    agent_commands.add_parser("add", help="register an agent and print their token, once").add_argument("name")
    agent_commands.add_parser("list", help="the registered agents (never their tokens)")
    agent_commands.add_parser("remove", help="unregister an agent: their token stops working at once").add_argument("name")
    agent.set_defaults(run=cmd_agent)
    args = parser.parse_args(argv)
    run: Callable[[argparse.Namespace], None] = args.run
    if args.workspace:  # before anything reads the settings: every stage, and every child process, sees it
        from supportflow.settings import get_settings

        os.environ["SUPPORTFLOW_WORKSPACE"] = str(Path(args.workspace).resolve())
        get_settings.cache_clear()
    try:
        if getattr(args, "prefect", False):
            _use_prefect_server()
        with bars(enabled=sys.stderr.isatty()):
            run(args)
    except SupportflowError as error:
        _print_error(str(error))
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
