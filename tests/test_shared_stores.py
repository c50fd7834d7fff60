"""MLflow at scale: the tracking store and registry on PostgreSQL, the artifacts in an S3 bucket (the moto server),
reached through `supportflow.tracking` with nothing but settings, as every stage reaches it."""

from pathlib import Path

import mlflow
import psycopg
import s3fs

from supportflow.settings import Settings
from supportflow.tracking import CHAMPION, connect, start_run
from tests.servers import Postgres


def test_mlflow_on_postgresql_registers_a_version_with_its_artifacts_in_s3_and_keeps_its_alias(
    postgres: Postgres, s3_endpoint: str, tmp_path: Path
) -> None:
    s3fs.S3FileSystem(endpoint_url=s3_endpoint).mkdir("mlflow-artifacts")
    settings = Settings(
        mlflow_tracking_uri=postgres.new_database(),
        mlflow_artifact_root="s3://mlflow-artifacts/supportflow",
        s3_endpoint_url=s3_endpoint,
    )
    with start_run(settings, "shared-stores", "a model") as run:
        mlflow.log_metric("macro_f1", 0.81)
        (tmp_path / "weights.txt").write_text("the model's weights")
        mlflow.log_artifact(str(tmp_path / "weights.txt"), "model")
    client = connect(settings)
    client.create_registered_model("intent-classifier")
    version = client.create_model_version("intent-classifier", f"{run.info.artifact_uri}/model", run.info.run_id)
    client.set_registered_model_alias("intent-classifier", CHAMPION, version.version)

    # Another process reaches the same store with the same settings: the alias, the metric and the artifact are there.
    again = connect(settings)
    champion = again.get_model_version_by_alias("intent-classifier", CHAMPION)
    assert str(champion.version) == str(version.version) == "1"
    assert again.get_run(champion.run_id).data.metrics == {"macro_f1": 0.81}
    assert run.info.artifact_uri.startswith("s3://mlflow-artifacts/supportflow/")
    stored = s3fs.S3FileSystem(endpoint_url=s3_endpoint).find("mlflow-artifacts/supportflow")
    assert [path for path in stored if path.endswith("model/weights.txt")]  # in the bucket, not on this machine's disk
    downloaded = mlflow.artifacts.download_artifacts(f"models:/intent-classifier@{CHAMPION}", dst_path=str(tmp_path / "out"))
    assert (Path(downloaded) / "weights.txt").read_text() == "the model's weights"
    with psycopg.connect(settings.mlflow_tracking_uri.replace("+psycopg", "")) as database:  # the registry is the server's
        assert database.execute("SELECT name, alias FROM registered_model_aliases").fetchall() == [("intent-classifier", CHAMPION)]
