"""Integration logs on the flow run's page: retries and outages of Label Studio and image sources.

`integrations.*` modules log with the standard `logging` module (they know
nothing of Prefect). Importing `flows` attaches one handler to the
`integrations` logger that forwards its records to the Prefect API, tagged
with the current flow or task run, so "Label Studio unavailable ...; retry 2/5"
shows in the run's Logs tab. Outside a run (the `clasp` commands that call the
integrations directly) records are not forwarded: Prefect's own
`PREFECT_LOGGING_EXTRA_LOGGERS` would attach the same API handler but warn on
every record logged outside a run, so this handler checks for a run first.
Records from threads the integrations start themselves (which carry no run
context) stay in the process's own logging.
"""

from __future__ import annotations

import logging

from prefect.logging.handlers import APILogHandler

INTEGRATIONS_LOGGER = "integrations"


class RunLogHandler(APILogHandler):
    """Prefect's API log handler, for records logged inside a flow or task run only."""

    def emit(self, record: logging.LogRecord) -> None:
        from prefect.context import FlowRunContext, TaskRunContext

        if FlowRunContext.get() is None and TaskRunContext.get() is None:
            return
        super().emit(record)


def attach(logger_name: str = INTEGRATIONS_LOGGER, level: int = logging.INFO) -> logging.Logger:
    """Forward `logger_name`'s records (INFO and above) to the current run's logs; idempotent."""
    logger = logging.getLogger(logger_name)
    if not any(isinstance(h, RunLogHandler) for h in logger.handlers):
        handler = RunLogHandler()
        handler.setLevel(level)
        logger.addHandler(handler)
    if logger.level == logging.NOTSET or logger.level > level:
        logger.setLevel(level)
    return logger
