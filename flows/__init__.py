"""Prefect flows: thin orchestration over the `supportflow` package.

Importing this package sets the Prefect defaults that one machine needs (analytics off, which
otherwise locks SQLite; a patient ephemeral API start on 2 cores) and keeps expected failures,
whose messages already say what went wrong, from being logged as tracebacks.
"""

import logging
import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")

from supportflow.errors import SupportflowError


class _ExpectedErrorsWithoutTraceback(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], SupportflowError):
            record.exc_info = None
            record.exc_text = None
        return True


for _name in ("prefect.task_engine", "prefect.flow_engine", "prefect.task_runs", "prefect.flow_runs"):
    logging.getLogger(_name).addFilter(_ExpectedErrorsWithoutTraceback())
