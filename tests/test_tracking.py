"""The MLflow store survives a process killed while it is being made: no later run finds a half-migrated store."""

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

from supportflow.settings import Settings
from supportflow.tracking import connect

# Runs `connect` on a fresh store and kills itself halfway through MLflow's migrations, after one of the
# later ones has created an index (the statement a later run then failed on: "index ... already exists").
KILLED_MID_MIGRATION = textwrap.dedent(
    """
    import os, signal, sys
    from sqlalchemy import event
    from sqlalchemy.engine import Engine
    from supportflow.settings import Settings
    from supportflow.tracking import connect

    seen = []

    @event.listens_for(Engine, "after_cursor_execute")
    def die_halfway(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("CREATE INDEX"):
            seen.append(statement)
            if len(seen) == 3:
                os.kill(os.getpid(), signal.SIGKILL)

    connect(Settings(mlflow_tracking_uri="sqlite:///" + sys.argv[1]))
    """
)


def test_a_store_killed_while_being_made_leaves_nothing_half_made(tmp_path: Path) -> None:
    database = tmp_path / "mlflow.db"
    command = [sys.executable, "-c", KILLED_MID_MIGRATION, str(database)]
    killed = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not database.exists(), "a half-migrated store took the store's place"

    client = connect(Settings(mlflow_tracking_uri=f"sqlite:///{database}"))
    experiment = client.create_experiment("after-the-kill")
    assert client.get_experiment(experiment).name == "after-the-kill"
    leftovers = sorted(path.name for path in tmp_path.iterdir() if path.name.endswith(".creating"))
    assert len(leftovers) <= 1, leftovers  # only the killed process's own side file can remain


def test_an_existing_store_is_kept(tmp_path: Path) -> None:
    database = tmp_path / "mlflow.db"
    settings = Settings(mlflow_tracking_uri=f"sqlite:///{database}")
    connect(settings).create_experiment("kept")
    inode = database.stat().st_ino

    connect(settings)

    assert database.stat().st_ino == inode
    with sqlite3.connect(database) as db:
        names = {row[0] for row in db.execute("select name from experiments")}
    assert "kept" in names
    assert not [path for path in tmp_path.iterdir() if path.name.endswith(".creating")]
    assert os.access(database, os.W_OK)
