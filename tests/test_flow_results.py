"""The cached stages' results live on the lake, so a run resumed on a new pod (a fresh process with an empty Prefect
home, as every Kubernetes flow run is) skips the stages that finished, on S3 as on a local lake."""

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from flows.results import RESULTS_AREA

ROOT = Path(__file__).resolve().parent.parent

RESUMED_RUN = """
import sys
from pathlib import Path

from prefect import flow

import flows.pipeline as pipeline
from flows.results import on_the_lake
from supportflow.dialogue.build import DialogueBuild
from supportflow.settings import get_settings

built = Path(sys.argv[1])


def build_dialogue() -> DialogueBuild:  # stands in for the Rasa training the stage runs: what a cached stage skips
    built.write_text(built.read_text() + "built\\n" if built.exists() else "built\\n")
    return DialogueBuild(
        project=built.parent, model=built, classifier_version="1", fallback_threshold=0.3, intents=3, seconds=1.0, run_id="r1"
    )


pipeline.dialogue = build_dialogue


@flow(name="resumed")
def resumed() -> DialogueBuild:
    settings = get_settings()
    return on_the_lake(pipeline.dialogue_stage, settings)(settings, "1", "snap-resumed")


print(resumed().model_dump_json())
"""


def run_on_a_new_pod(tmp_path: Path, environment: dict[str, str], built: Path) -> str:
    """A fresh interpreter with its own empty Prefect home: nothing local survives, and only the Prefect API (the
    test harness's server, as every pod of a deployment shares one) and the lake are shared."""
    from prefect.settings import get_current_settings

    home = tmp_path / f"prefect-home-{uuid.uuid4().hex[:8]}"
    api = str(get_current_settings().api.url)
    env = {**os.environ, **environment, "PREFECT_HOME": str(home), "PREFECT_API_URL": api, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", RESUMED_RUN, str(built)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1]


@pytest.mark.slow
def test_a_resumed_run_in_a_fresh_process_skips_the_stage_whose_result_is_on_the_s3_lake(
    s3_endpoint: str, tmp_path: Path, prefect_harness: None
) -> None:
    import s3fs

    bucket = f"lake-{uuid.uuid4().hex[:12]}"
    s3 = s3fs.S3FileSystem(endpoint_url=s3_endpoint)
    s3.mkdir(bucket)
    lake = {"SUPPORTFLOW_LAKE_URL": f"s3://{bucket}/supportflow", "SUPPORTFLOW_S3_ENDPOINT_URL": s3_endpoint}
    built = tmp_path / "built.log"

    first = run_on_a_new_pod(tmp_path, lake, built)
    assert built.read_text() == "built\n"
    assert s3.find(f"{bucket}/supportflow/{RESULTS_AREA}"), "the stage's result is not on the lake"
    second = run_on_a_new_pod(tmp_path, lake, built)
    assert built.read_text() == "built\n", "the resumed run built the stage again"
    assert second == first
    assert not list(tmp_path.glob("prefect-home-*/storage/*"))  # nothing was kept in a Prefect home
