"""Data contracts: Great Expectations suites kept as files in `data_contracts/`.

The suite file is the contract; this module only runs it. Column-map rules name the rows that
break them (those rows go to quarantine with the rule's reason); table rules and type rules judge
the batch as a whole (the run stops). Results are kept in a file-backed GX project so data docs
can show a person what happened.

Great Expectations is imported by the checker alone, when it is made: it is the slowest import of the whole stack,
and most processes that import this module (training, the dialogue build, `evaluate`, all through the snapshot
module) read the contract's rules and never check a batch.
"""

import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from supportflow.errors import ContractError
from supportflow.settings import Settings
from supportflow.validate.catalogue import IntentCatalogue, load_catalogue

TICKET_SUITE = "tickets.suite.json"


MIN_EXAMPLES_RULE = "intent_min_examples"  # the rule that quarantines an intent with too few tickets to learn


@dataclass(frozen=True)
class Contract:
    suite: dict[str, Any]
    catalogue: IntentCatalogue
    min_examples_per_intent: int  # the setting, given to the suite as a parameter

    @property
    def name(self) -> str:
        return str(self.suite["name"])

    @property
    def version(self) -> str:
        return str(self.suite["meta"]["contract_version"])

    @property
    def parameters(self) -> dict[str, Any]:
        """What a suite's `{"$PARAMETER": name}` may name: the values belong to the desk and its settings, not to the suite file."""
        return {"intent_catalogue": list(self.catalogue.intents), "min_examples_per_intent": self.min_examples_per_intent}

    @property
    def intent_minimum(self) -> int | None:
        """The fewest tickets an intent needs to pass `intent_min_examples` as this suite states it (a workspace's suite may
        write a number instead of the parameter); None when the suite has no such rule."""
        for expectation in self.suite["expectations"]:
            if expectation.get("meta", {}).get("rule") == MIN_EXAMPLES_RULE:
                value = expectation["kwargs"].get("min_value")
                if isinstance(value, dict):
                    value = self.parameters[value["$PARAMETER"]]
                return None if value is None else math.ceil(float(value))
        return None


def load_contract(settings: Settings, suite_file: str = TICKET_SUITE) -> Contract:
    """The suite from the first folder that has it (a workspace's override before the project's default)."""
    path = next((folder / suite_file for folder in settings.suite_dirs if (folder / suite_file).is_file()), None)
    if path is None:
        folders = ", ".join(str(folder) for folder in settings.suite_dirs)
        raise ContractError(f"the data contract {suite_file} is missing from {folders}")
    try:
        suite = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ContractError(f"{path}: not valid JSON: {error}") from error
    if "contract_version" not in suite.get("meta", {}):
        raise ContractError(f"{path}: meta.contract_version is required")
    catalogue = load_catalogue(settings.catalogue_file)
    contract = Contract(suite=suite, catalogue=catalogue, min_examples_per_intent=settings.min_examples_per_intent)
    unknown = sorted(_parameter_names(suite["expectations"]) - set(contract.parameters))
    if unknown:
        raise ContractError(f"{path}: unknown suite parameters {unknown}; the parameters given are {sorted(contract.parameters)}")
    return contract


def _parameter_names(node: object) -> set[str]:
    """Every `{"$PARAMETER": name}` in a suite's expectations."""
    if isinstance(node, dict):
        if isinstance(node.get("$PARAMETER"), str):
            return {node["$PARAMETER"]}
        return set().union(*(_parameter_names(value) for value in node.values()))
    if isinstance(node, list):
        return set().union(*(_parameter_names(value) for value in node))
    return set()


def _with_parameters(reason: str, parameters: dict[str, Any]) -> str:
    """A rule's reason with the parameters it names as `{name}` written in, so it states the value the run used."""
    for name, value in parameters.items():
        reason = reason.replace(f"{{{name}}}", str(value))
    return reason


@dataclass
class CheckResult:
    rows: int
    row_reasons: dict[int, list[str]] = field(default_factory=dict)  # position in the frame -> reasons
    batch_failures: list[str] = field(default_factory=list)
    rule_counts: dict[str, int] = field(default_factory=dict)
    rule_rows: dict[str, list[int]] = field(default_factory=dict)  # rule -> positions of the rows that break it


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value.item() if isinstance(value, np.generic) else value)  # 4.0, not np.float64(4.0)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


class ContractChecker:
    """One GX project, one suite, one checkpoint: created once, run on many batches."""

    def __init__(self, contract: Contract, gx_root: Path, prepare: bool = True) -> None:
        """`prepare` writes the suite and checkpoint into the GX project; parallel workers only read them."""
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        self.contract = contract
        gx_root.mkdir(parents=True, exist_ok=True)
        self.context = gx.get_context(mode="file", project_root_dir=str(gx_root))
        if not prepare:
            self.checkpoint = self.context.checkpoints.get(contract.name)
            return
        self.context.variables.progress_bars = ProgressBarsConfig(globally=False)
        self.context.variables.save()
        asset_name = contract.name
        source = self.context.data_sources.add_or_update_pandas("lake")
        asset = next((a for a in source.assets if a.name == asset_name), None) or source.add_dataframe_asset(asset_name)
        batch = next((b for b in asset.batch_definitions if b.name == "file"), None) or asset.add_batch_definition_whole_dataframe("file")
        suite = self.context.suites.add_or_update(gx.ExpectationSuite(**contract.suite))
        definition = self.context.validation_definitions.add_or_update(gx.ValidationDefinition(name=asset_name, data=batch, suite=suite))
        self.checkpoint = self.context.checkpoints.add_or_update(
            gx.Checkpoint(name=asset_name, validation_definitions=[definition], actions=[], result_format={"result_format": "COMPLETE"})
        )

    def check(self, frame: pd.DataFrame, batch_name: str) -> CheckResult:
        """Validate one batch; `frame` must have a RangeIndex so failures map to positions."""
        import great_expectations as gx

        result = self.checkpoint.run(
            batch_parameters={"dataframe": frame},
            expectation_parameters=self.contract.parameters,
            run_id=gx.RunIdentifier(run_name=batch_name),
        )
        outcome = CheckResult(rows=len(frame))
        reasons: dict[int, list[str]] = defaultdict(list)
        counts: dict[str, int] = defaultdict(int)
        rows: dict[str, list[int]] = defaultdict(list)
        for validation in result.run_results.values():
            for expectation in validation.results:
                config = expectation.expectation_config
                rule = config.meta.get("rule", config.type)
                reason = _with_parameters(config.meta.get("reason", config.type), self.contract.parameters)
                if expectation.exception_info and expectation.exception_info.get("raised_exception"):
                    message = expectation.exception_info.get("exception_message")
                    outcome.batch_failures.append(f"rule {rule!r} could not run: {message}")
                    continue
                if expectation.success:
                    continue
                indices = expectation.result.get("unexpected_index_list")
                if "column_set" in config.kwargs:
                    expected = set(config.kwargs["column_set"])
                    missing, extra = sorted(expected - set(frame.columns)), sorted(set(frame.columns) - expected)
                    # Without the right columns the other rules say nothing useful: report this one alone.
                    outcome.batch_failures = [f"rule {rule!r}: {reason} (missing {missing}, unexpected {extra})"]
                    break
                if indices is None:
                    observed = expectation.result.get("observed_value")
                    outcome.batch_failures.append(f"rule {rule!r}: {reason} (observed {_short(observed, 200)})")
                    continue
                counts[rule] += len(indices)
                rows[rule].extend(int(position) for position in indices)
                # GX truncates `unexpected_list`; the offending values are read from the frame itself.
                column = frame[config.kwargs["column"]]
                for position in indices:
                    reasons[int(position)].append(f"{rule}: {reason} (got {_short(column.iat[int(position)])})")
        outcome.row_reasons = dict(reasons)
        outcome.rule_counts = dict(counts)
        outcome.rule_rows = dict(rows)
        return outcome

    def build_docs(self) -> str:
        """Render the data docs and return the index page's location."""
        self.context.build_data_docs()
        sites = self.context.get_docs_sites_urls()
        return str(sites[0]["site_url"]) if sites else ""
