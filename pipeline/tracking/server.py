"""Reaching an MLflow tracking server: bounded HTTP retries for every command, and a wait that says
at once which server it waits for, instead of MLflow's minutes of silent retries."""
from __future__ import annotations

import os
import sys
import time

# How long a command waits for an http(s) MLflow server that does not answer, in seconds; and
# MLflow's own per-request limits, set here only (MLflow's defaults retry for minutes).
WAIT_ENV = "DINA_MLFLOW_WAIT_S"
DEFAULT_WAIT_S = 30.0
HTTP_LIMITS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


class ServerUnreachable(RuntimeError):
    """The MLflow server did not answer within the wait; the message names it."""


def limit_mlflow_http() -> None:
    """MLflow's HTTP retries and timeout, bounded (a value the user set in the environment wins):
    every command calls this before its first MLflow request."""
    for name, value in HTTP_LIMITS.items():
        os.environ.setdefault(name, value)


def wait_for_server(uri: str, who: str) -> None:
    """For an http(s) tracking URI: return once the server answers; while it does not, say so at
    once (naming it) and wait up to $DINA_MLFLOW_WAIT_S seconds, then raise ServerUnreachable.
    Other URIs (sqlite:, file paths, databricks) return at once."""
    import urllib.error
    import urllib.request

    limit_mlflow_http()
    if not uri.startswith(("http://", "https://")):
        return
    try:
        wait_s = float(os.environ.get(WAIT_ENV, DEFAULT_WAIT_S))
    except ValueError:
        raise ServerUnreachable(f"{WAIT_ENV}={os.environ[WAIT_ENV]!r} is not a number of "
                                f"seconds") from None
    deadline = time.monotonic() + wait_s
    said = False
    while True:
        try:
            urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5).close()
            return
        except urllib.error.HTTPError:
            return  # it answered: whatever the status, a server is there
        except (OSError, ValueError) as err:
            reason = getattr(err, "reason", err)
        if not said:
            print(f"{who}: waiting up to {wait_s:g} s for the MLflow server at {uri} "
                  f"({reason}; {WAIT_ENV} sets the wait)", file=sys.stderr, flush=True)
            said = True
        left = deadline - time.monotonic()
        if left <= 0:
            raise ServerUnreachable(f"the MLflow server at {uri} did not answer within "
                                    f"{wait_s:g} s ({reason}); start it, or give another "
                                    f"tracking URI ({WAIT_ENV} sets the wait)")
        time.sleep(min(1.0, left))
