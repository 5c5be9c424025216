"""Sandbox templates: what a workspace's userland looks like.

Every template shares the runtime host's read-only /usr (Debian: sh, bash,
coreutils, git, curl, python3); a template picks the environment, the login shell
of its terminals and a description for people choosing one. Templates are
presets over the same base, not separate images: a tool missing from the host's
/usr is missing in every template (install it per workspace, e.g. with pip into
/workspace, or add it to the host image).
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Inside every sandbox: the workspace's files, and a private HOME that lives on a
# tmpfs until the sandbox stops (dotfiles and credentials never land in the repository).
WORKSPACE = "/workspace"
HOME = "/home/sandbox"
USER = "sandbox"
UID = 1000
GID = 1000

BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class Template:
    name: str
    description: str
    # argv of a terminal's shell when the caller asks for none
    login_shell: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)


def _env(**extra: str) -> dict[str, str]:
    return {
        "PATH": BASE_PATH,
        "HOME": HOME,
        "USER": USER,
        "LOGNAME": USER,
        "SHELL": "/bin/bash",
        "TERM": "xterm-256color",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        **extra,
    }


TEMPLATES: dict[str, Template] = {
    "base": Template(
        name="base",
        description="Debian userland: sh, bash, coreutils, git and curl.",
        login_shell=("/bin/bash", "-l"),
        env=_env(),
    ),
    "python": Template(
        name="python",
        description="Debian userland with Python 3 and pip; packages install into /workspace/.local.",
        login_shell=("/bin/bash", "-l"),
        env=_env(
            PATH=f"{WORKSPACE}/.local/bin:{BASE_PATH}",
            PYTHONUSERBASE=f"{WORKSPACE}/.local",
            PIP_USER="1",
            # Debian marks its Python externally managed; user installs into the
            # workspace cannot break the read-only system packages.
            PIP_BREAK_SYSTEM_PACKAGES="1",
            PIP_CACHE_DIR=f"{HOME}/.cache/pip",
            PIP_DISABLE_PIP_VERSION_CHECK="1",
            PYTHONUNBUFFERED="1",
        ),
    ),
}

DEFAULT_TEMPLATE = "base"


def get_template(name: str) -> Template:
    """The template called `name`; KeyError with a readable message when there is none."""
    try:
        return TEMPLATES[name]
    except KeyError:
        known = ", ".join(sorted(TEMPLATES))
        raise KeyError(f"unknown template {name!r}; choose one of: {known}") from None
