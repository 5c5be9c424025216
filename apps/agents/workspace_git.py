"""The run's view of the workspace repository: where it is and what changed.

The repository is the workspace root when it is one, else the first directory just
below the root that is (a workspace usually holds one clone). The diff is taken
against a copy of the index, so untracked files show as added without the run
touching what the member has staged."""

from __future__ import annotations

import logging

from apps.tenancy.audit import Actor
from apps.workspaces.models import Workspace
from apps.workspaces.services import workspace_exec

FIND_REPOSITORY = 'for d in . */; do if [ -e "$d/.git" ]; then printf "%s" "$d"; exit 0; fi; done; exit 3'
# Everything that changed, new files included, without writing the real index. The copy
# keeps the index's mtime (--preserve=timestamps): git tells a file changed within the
# second its entry was recorded (same size, same whole-second mtime) by comparing the entry
# with the index file's own mtime, and a copy made later hid such an edit (an agent's first
# edit right after a clone or commit came out as an empty diff, about 1 in 40 here).
DIFF = (
    "index=$(mktemp) || exit 4;"
    ' cp --preserve=timestamps "$(git rev-parse --git-dir)/index" "$index" 2>/dev/null || rm -f "$index";'
    ' export GIT_INDEX_FILE="$index";'
    ' git add --all && git diff --cached --no-color --no-ext-diff; code=$?; rm -f "$index"; exit $code'
)
GIT_TIMEOUT = 120.0

logger = logging.getLogger(__name__)


def repository_path(*, actor: Actor, workspace: Workspace) -> str | None:
    """The repository's path relative to the workspace root ("" for the root), or None."""
    outcome = workspace_exec(actor=actor, workspace=workspace, command=FIND_REPOSITORY, timeout=30.0)
    if outcome.exit_code != 0:
        return None
    path = outcome.stdout.strip().rstrip("/")
    return "" if path in (".", "") else path


def repository_diff(*, actor: Actor, workspace: Workspace, path: str) -> str:
    """The repository's changes against HEAD, untracked files included (a unified diff)."""
    outcome = workspace_exec(actor=actor, workspace=workspace, command=DIFF, cwd=path, timeout=GIT_TIMEOUT)
    if outcome.exit_code != 0:
        logger.warning(
            "No diff of workspace %s (%s): git exited %s: %s",
            workspace.pk,
            path or ".",
            outcome.exit_code,
            (outcome.stderr or outcome.stdout)[-500:],
        )
        return ""
    return outcome.stdout
