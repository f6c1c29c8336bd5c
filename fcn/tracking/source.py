"""Where a run's code came from: MLflow's source tags (entry point, git commit)."""

from __future__ import annotations

import functools
import os
import subprocess
import sys

# MLflow's own run tags for where a run's code came from (the UI shows them as its source).
TAG_GIT_COMMIT = "mlflow.source.git.commit"
TAG_SOURCE_NAME = "mlflow.source.name"
TAG_SOURCE_TYPE = "mlflow.source.type"
GIT_COMMIT_ENV = "FCN_GIT_COMMIT"  # the commit, for code that runs outside a checkout
_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@functools.lru_cache(maxsize=1)
def source_tags() -> dict:
    """MLflow's source tags for a run of this process: the entry point (`jobs/train.py`,
    relative to the checkout) and the git commit when known (`git_commit`)."""
    script = sys.argv[0] if sys.argv else ""
    entry = os.path.abspath(script) if script not in ("", "-c") else "python"
    if entry.startswith(_REPO + os.sep):
        entry = os.path.relpath(entry, _REPO)
    tags = {TAG_SOURCE_NAME: entry, TAG_SOURCE_TYPE: "JOB"}
    commit = git_commit()
    if commit:
        tags[TAG_GIT_COMMIT] = commit
    return tags


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit of the checkout this code runs from; else `FCN_GIT_COMMIT` from the
    environment, else None.

    `ray job submit --working-dir .` leaves `.git` out of what it uploads (Ray's default
    excludes), so a job there finds no checkout: its submitter passes the commit along, e.g.
    `--runtime-env-json '{"env_vars": {"FCN_GIT_COMMIT": "'$(git rev-parse HEAD)'"}}'`.
    """
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=os.path.dirname(os.path.abspath(__file__)),
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        done = None
    if done is not None and done.returncode == 0:
        return done.stdout.strip()
    return os.environ.get(GIT_COMMIT_ENV) or None
