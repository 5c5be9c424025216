"""What the agent is told about its workspace, read from the workspace itself.

`environment_facts(workspace, actor)` runs one shell script in the sandbox and
returns the OS, the toolchains present with their versions, the NAMES of the
environment variables (never their values: they may hold secrets), the repository's
instructions file (AGENTS.md, else .agentyard/instructions.md, cut to a size), git's
branch and changes, the top of the file tree and the working directory.
`environment_text(facts)` renders them for the prompt.
"""

from __future__ import annotations

import secrets
import shlex
from typing import Any

from apps.tenancy.audit import Actor
from apps.workspaces.models import Workspace
from apps.workspaces.services import workspace_exec

WORKSPACE = "/workspace"
INSTRUCTIONS_FILES = ("AGENTS.md", ".agentyard/instructions.md")
INSTRUCTIONS_CHARS = 8000
TOP_LEVEL_ENTRIES = 60
FACTS_TIMEOUT_SECONDS = 30.0

# name -> the command printing its version (first line kept)
TOOLCHAINS: dict[str, str] = {
    "python3": "python3 --version",
    "pip3": "pip3 --version",
    "uv": "uv --version",
    "node": "node --version",
    "npm": "npm --version",
    "git": "git --version",
    "go": "go version",
    "rustc": "rustc --version",
    "cargo": "cargo --version",
    "java": "java -version",
    "gcc": "gcc --version",
    "make": "make --version",
    "ruby": "ruby --version",
    "perl": "perl -e 'print qq($^V\\n)'",
    "php": "php --version",
    "deno": "deno --version",
    "bun": "bun --version",
}


def _script(boundary: str) -> str:
    def section(name: str) -> str:
        return f"printf '\\n{boundary}{name}\\n'"

    probes = "\n".join(
        f"if command -v {name} >/dev/null 2>&1; then printf '%s\\t' {name};"
        f" timeout 5 {command} 2>&1 </dev/null | head -n 1; fi"
        for name, command in TOOLCHAINS.items()
    )
    instructions = " ".join(shlex.quote(name) for name in INSTRUCTIONS_FILES)
    return f"""
cd {WORKSPACE} 2>/dev/null
{section("os")}
( . /etc/os-release 2>/dev/null && printf '%s' "${{PRETTY_NAME:-$NAME $VERSION_ID}}" )
{section("kernel")}
uname -srm 2>/dev/null
{section("user")}
id -un 2>/dev/null
{section("cwd")}
pwd
{section("shell")}
bash --version 2>/dev/null | head -n 1
{section("tools")}
{probes}
{section("env")}
if command -v bash >/dev/null 2>&1; then bash -c 'compgen -e'
else env | sed -n 's/^\\([A-Za-z_][A-Za-z0-9_]*\\)=.*/\\1/p'; fi
{section("files")}
ls -Ap 2>/dev/null | head -n {TOP_LEVEL_ENTRIES + 1}
{section("git")}
if command -v git >/dev/null 2>&1 && git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  git rev-parse --abbrev-ref HEAD 2>/dev/null
  git status --porcelain 2>/dev/null | wc -l
fi
for name in {instructions}; do
  if [ -f "$name" ]; then
    printf '\\n{boundary}instructions\\n%s\\n' "$name"
    head -c {INSTRUCTIONS_CHARS * 4 + 1} "$name"
    break
  fi
done
"""


def _sections(output: str, boundary: str) -> dict[str, str]:
    sections: dict[str, str] = {}
    for part in output.split(f"\n{boundary}")[1:]:
        name, _, body = part.partition("\n")
        sections[name] = body
    return sections


def environment_facts(workspace: Workspace, actor: Actor | None = None) -> dict[str, Any]:
    """The workspace's facts, gathered with one exec (the workspace must be running)."""
    boundary = f"@@agentyard-{secrets.token_hex(8)}@@"
    result = workspace_exec(
        actor=actor or Actor.system(),
        workspace=workspace,
        argv=["sh", "-c", _script(boundary)],
        timeout=FACTS_TIMEOUT_SECONDS,
    )
    sections = _sections(result.stdout, boundary)

    def line(name: str) -> str:
        return sections.get(name, "").strip()

    tools: dict[str, str] = {}
    for entry in sections.get("tools", "").splitlines():
        name, _, version = entry.partition("\t")
        if name in TOOLCHAINS:
            tools[name] = version.strip()
    files = [name for name in sections.get("files", "").splitlines() if name]
    facts: dict[str, Any] = {
        "os": line("os") or "unknown",
        "kernel": line("kernel"),
        "user": line("user"),
        "cwd": line("cwd") or WORKSPACE,
        "shell": line("shell"),
        "tools": tools,
        "env": sorted({name for name in sections.get("env", "").split() if name}),
        "files": files[:TOP_LEVEL_ENTRIES],
        "files_truncated": len(files) > TOP_LEVEL_ENTRIES,
        "git": None,
        "instructions": None,
    }
    git = line("git").splitlines()
    if len(git) == 2:
        facts["git"] = {"branch": git[0], "changed_files": int(git[1]) if git[1].isdigit() else 0}
    if "instructions" in sections:
        path, _, text = sections["instructions"].partition("\n")
        truncated = len(text) > INSTRUCTIONS_CHARS
        facts["instructions"] = {
            "path": f"{WORKSPACE}/{path}",
            "text": text[:INSTRUCTIONS_CHARS],
            "truncated": truncated,
        }
    return facts


def environment_text(facts: dict[str, Any], tool_names: list[str] | None = None) -> str:
    """The facts as the prompt states them."""
    lines = [f"Operating system: {facts['os']}" + (f" ({facts['kernel']})" if facts.get("kernel") else "")]
    lines.append(f"Working directory: {facts['cwd']} (user {facts.get('user') or 'unknown'})")
    if facts["tools"]:
        lines.append(
            "Toolchains installed: "
            + "; ".join(f"{name}: {version}" for name, version in facts["tools"].items())
        )
    else:
        lines.append("Toolchains installed: none found")
    if facts["env"]:
        lines.append("Environment variables set (names only): " + ", ".join(facts["env"]))
    if facts.get("git"):
        git = facts["git"]
        lines.append(f"Git: branch {git['branch']}, {git['changed_files']} changed or untracked files")
    if facts["files"]:
        more = ", ..." if facts.get("files_truncated") else ""
        lines.append("Top level of the workspace: " + ", ".join(facts["files"]) + more)
    if tool_names:
        lines.append("Tools you can call: " + ", ".join(tool_names))
    instructions = facts.get("instructions")
    if instructions:
        cut = " (cut; read the whole file with the editor)" if instructions["truncated"] else ""
        lines.append(
            f"\nThe repository's instructions, from {instructions['path']}{cut}:\n"
            + instructions["text"].strip()
        )
    return "\n".join(lines)
