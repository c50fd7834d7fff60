"""A cached pipeline stage runs again exactly when something it reads has changed, and only then."""

import json
import shutil
from pathlib import Path

from supportflow.kb.build import KB_SUITE
from supportflow.pipeline import kb_stage_key
from supportflow.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def test_the_knowledge_base_is_rebuilt_when_the_desks_kb_contract_changes(tmp_path: Path) -> None:
    """A desk that tightens its knowledge-base contract (an override in its data_contracts/) expects the next pipeline
    run to skip the articles that now break it, not to keep serving the build its old contract let through."""
    source = ROOT / "examples" / "saas"
    desk = tmp_path / "desk"
    shutil.copytree(source, desk, ignore=lambda folder, names: ["data"] if Path(folder) == source else [])
    settings = Settings(workspace=desk)
    before = kb_stage_key(settings, "snap-1")
    assert kb_stage_key(settings, "snap-1") == before  # nothing changed: the finished build is reused

    suite = json.loads((ROOT / "data_contracts" / KB_SUITE).read_text())
    suite["expectations"] = [e for e in suite["expectations"] if e["meta"]["rule"] != "no_script"]
    (desk / "data_contracts").mkdir()
    (desk / "data_contracts" / KB_SUITE).write_text(json.dumps(suite))
    overridden = kb_stage_key(settings, "snap-1")
    assert overridden != before

    suite["expectations"][0]["meta"]["reason"] = "not a knowledge-base document"
    (desk / "data_contracts" / KB_SUITE).write_text(json.dumps(suite))
    assert kb_stage_key(settings, "snap-1") not in (before, overridden)
