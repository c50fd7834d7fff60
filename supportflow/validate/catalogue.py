"""The versioned intent catalogue (`data_contracts/intents.yaml`): the intents tickets may carry.

Apart from the contracts module because the served bot reads it too, and must not import Great Expectations.
"""

from dataclasses import dataclass
from pathlib import Path

import yaml

from supportflow.errors import ContractError

INTENT_CATALOGUE = "intents.yaml"


@dataclass(frozen=True)
class IntentCatalogue:
    name: str
    version: str
    intents: tuple[str, ...]


def load_catalogue(contracts_dir: Path) -> IntentCatalogue:
    path = contracts_dir / INTENT_CATALOGUE
    if not path.exists():
        raise ContractError(f"{path}: the intent catalogue is missing")
    document = yaml.safe_load(path.read_text())
    intents = tuple(document.get("intents") or ())
    if not intents or len(set(intents)) != len(intents):
        raise ContractError(f"{path}: the catalogue must list distinct intents")
    return IntentCatalogue(name=str(document["name"]), version=str(document["version"]), intents=intents)
