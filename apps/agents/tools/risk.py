"""The risk policy: which actions wait for a member's approval in confirmation mode.

`risk_reason(command)` reads a shell command line and answers why it is risky (a
sentence a member reads beside the approve/deny buttons), or None. It errs on the
side of asking: a command it cannot parse is scanned word by word, and the text
of `bash -c`, `sh -c`, `eval` and `python -c` is read too. It is a policy for
people watching an agent, not a security boundary: the sandbox is the boundary
(no network beyond the workspace's allow-list, no host files, an unprivileged user).

`python_risk_reason(code)` does the same, heuristically, for the python tool: the
shell commands its strings would run, and the modules that delete trees or talk to
the network.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable, Iterator

# Where a command may write without asking: the workspace, scratch space and the streams.
WRITABLE_PREFIXES = (
    "/workspace",
    "/tmp",  # noqa: S108 (inside the sandbox)
    "/var/tmp",  # noqa: S108
    "/dev/null",
    "/dev/stdout",
    "/dev/stderr",
    "/dev/fd/",
)

NETWORK_PROGRAMS = {
    "curl": "downloads or uploads over the network (curl)",
    "wget": "downloads over the network (wget)",
    "ssh": "opens a remote shell (ssh)",
    "scp": "copies files over the network (scp)",
    "sftp": "copies files over the network (sftp)",
    "rsync": "copies files, possibly over the network (rsync)",
    "nc": "opens raw network connections (nc)",
    "ncat": "opens raw network connections (ncat)",
    "netcat": "opens raw network connections (netcat)",
    "socat": "opens raw network connections (socat)",
    "telnet": "opens a network connection (telnet)",
    "ftp": "transfers files over the network (ftp)",
}
PRIVILEGE_PROGRAMS = {"sudo", "su", "doas", "pkexec"}
DISK_PROGRAMS = {
    "dd": "writes raw data to files or devices (dd)",
    "mkfs": "formats a file system (mkfs)",
    "fdisk": "changes a disk's partitions (fdisk)",
    "parted": "changes a disk's partitions (parted)",
    "wipefs": "erases file system signatures (wipefs)",
    "shred": "overwrites files beyond recovery (shred)",
}
POWER_PROGRAMS = {"shutdown", "reboot", "halt", "poweroff", "init"}
PACKAGE_MANAGERS = {
    "pip": {"install", "download"},
    "pip3": {"install", "download"},
    "npm": {"install", "i", "add", "ci"},
    "yarn": {"add", "install"},
    "pnpm": {"add", "install", "i"},
    "gem": {"install"},
    "cargo": {"install"},
    "go": {"get", "install"},
    "apt": {"install"},
    "apt-get": {"install"},
    "apk": {"add"},
}
# Programs that run the rest of their arguments as a command.
WRAPPERS = {
    "env",
    "nohup",
    "time",
    "nice",
    "ionice",
    "command",
    "exec",
    "builtin",
    "xargs",
    "stdbuf",
    "timeout",
}
SHELLS = {"sh", "bash", "dash", "zsh", "ksh"}
PYTHONS = re.compile(r"^python(\d+(\.\d+)?)?$")
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
FORK_BOMB = re.compile(r"(\w+|:)\s*\(\s*\)\s*\{[^}]*\1\s*\|\s*\1\s*&")
SEPARATORS = {";", "&&", "||", "|", "&", "(", ")", ";;", "|&", "{", "}", "!"}

PYTHON_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\bshutil\.rmtree\b"), "deletes a directory tree (shutil.rmtree)"),
    (
        re.compile(r"\b(requests|httpx|urllib3|aiohttp)\b|\burllib\.request\b|\bhttp\.client\b|\burlopen\b"),
        "talks to the network (an HTTP client)",
    ),
    (re.compile(r"\bsocket\.(socket|create_connection)\b|\bimport socket\b"), "opens network sockets"),
    (re.compile(r"\b(paramiko|ftplib|smtplib|telnetlib)\b"), "talks to remote hosts"),
    (re.compile(r"\bos\.(setuid|setgid|chown)\b"), "changes file or process ownership"),
)
PYTHON_STRING = re.compile(
    r"""(?s)(\"\"\"(.*?)\"\"\"|'''(.*?)'''|"((?:[^"\\\n]|\\.)*)"|'((?:[^'\\\n]|\\.)*)')"""
)
PYTHON_SHELL_CALL = re.compile(r"\b(os\.system|os\.popen|subprocess\.\w+|pty\.spawn|os\.exec\w*)\s*\(")


def risk_reason(command: str, extra_patterns: Iterable[str] = ()) -> str | None:
    """Why this shell command needs a member's approval, or None. `extra_patterns`: the
    profile's own regular expressions (searched in the command), beside the built-in rules."""
    for pattern in extra_patterns:
        try:
            if re.search(pattern, command):
                return f"matches this organization's risk pattern /{pattern}/"
        except re.error:
            continue  # a broken pattern is refused when the profile is saved; never fail a step here
    return _command_reason(command, depth=0)


def python_risk_reason(code: str, extra_patterns: Iterable[str] = ()) -> str | None:
    """Why this Python code needs approval, or None (heuristic: its module use, and the shell
    commands in its strings when it runs commands)."""
    for pattern in extra_patterns:
        try:
            if re.search(pattern, code):
                return f"matches this organization's risk pattern /{pattern}/"
        except re.error:
            continue
    for regex, reason in PYTHON_PATTERNS:
        if regex.search(code):
            return reason
    if PYTHON_SHELL_CALL.search(code):
        for match in PYTHON_STRING.finditer(code):
            text = next(group for group in match.groups()[1:] if group is not None)
            found = _command_reason(text, depth=1)
            if found:
                return f"runs a shell command that {found}"
        if re.search(r"\brm\b[^\n]*-\w*r", code) or "rmtree" in code:
            return "deletes files recursively"
    return None


# -- shell parsing ---------------------------------------------------------------------------------


def _tokens(line: str) -> list[str] | None:
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    try:
        return list(lexer)
    except ValueError:  # unbalanced quotes: the line continues elsewhere (a heredoc, a string)
        return None


def _simple_commands(tokens: list[str]) -> Iterator[tuple[list[str], list[str]]]:
    """Each simple command's words and the targets of its output redirections."""
    words: list[str] = []
    targets: list[str] = []
    position = 0
    while position < len(tokens):
        token = tokens[position]
        if token in SEPARATORS or set(token) <= set(";&|()"):
            if words or targets:
                yield words, targets
            words, targets = [], []
        elif ">" in token and set(token) <= set("<>&|"):
            if position + 1 < len(tokens):
                targets.append(tokens[position + 1])
                position += 1
        elif "<" in token and set(token) <= set("<>&|"):
            position += 1  # an input redirection or heredoc marker: its word is not a command
        else:
            # `$(curl ...)` and backticks start a command of their own
            words.append(token.lstrip("`$").rstrip("`") or token)
        position += 1
    if words or targets:
        yield words, targets


def _command_reason(command: str, *, depth: int) -> str | None:
    if depth > 3:
        return None
    if FORK_BOMB.search(command):
        return "starts a fork bomb"
    for line in _logical_lines(command):
        tokens = _tokens(line)
        if tokens is None:
            tokens = re.split(r"[\s;&|()`]+", line)
        for words, targets in _simple_commands(tokens):
            reason = _redirect_reason(targets) or _words_reason(words, depth=depth)
            if reason:
                return reason
    return None


def _logical_lines(command: str) -> Iterator[str]:
    """Lines joined where a backslash continues them; a line that leaves a quote open is
    read together with the next ones."""
    pending = ""
    for raw in command.replace("\\\n", " ").splitlines():
        pending = f"{pending}\n{raw}" if pending else raw
        if _tokens(pending) is not None:
            yield pending
            pending = ""
    if pending:
        yield pending


def _outside(path: str) -> bool:
    if path.startswith("~") or path.startswith("$HOME"):
        return True
    if not path.startswith("/"):
        return False
    normal = re.sub(r"/+", "/", path)
    return not any(
        normal == prefix or normal.startswith(prefix.rstrip("/") + "/") for prefix in WRITABLE_PREFIXES
    )


def _redirect_reason(targets: list[str]) -> str | None:
    for target in targets:
        if target.isdigit() or target.startswith("&"):
            continue
        if _outside(target):
            return f"writes outside the workspace ({target})"
    return None


def _program(word: str) -> str:
    return word.rsplit("/", 1)[-1]


def _strip_wrappers(words: list[str]) -> list[str]:
    """The command a line really runs: past variable assignments and wrappers like env, nohup
    or timeout (with their options)."""
    while words:
        first = words[0]
        if ASSIGNMENT.match(first):
            words = words[1:]
            continue
        name = _program(first)
        if name not in WRAPPERS:
            break
        words = words[1:]
        while words and (words[0].startswith("-") or ASSIGNMENT.match(words[0]) or words[0][:1].isdigit()):
            words = words[1:]
    return words


def _flags(words: list[str]) -> set[str]:
    """Short flags spread into letters (-rf → r, f) and long options as they are."""
    flags: set[str] = set()
    for word in words:
        if word.startswith("--"):
            flags.add(word.split("=", 1)[0])
        elif word.startswith("-") and len(word) > 1:
            flags.update(word[1:])
    return flags


def _words_reason(words: list[str], *, depth: int) -> str | None:
    words = _strip_wrappers(words)
    if not words:
        return None
    name = _program(words[0])
    arguments = words[1:]
    if name in PRIVILEGE_PROGRAMS:
        return f"runs a command as another user ({name})"
    if name == "rm":
        return _rm_reason(arguments)
    if name == "git":
        return _git_reason(arguments)
    if name in NETWORK_PROGRAMS:
        return NETWORK_PROGRAMS[name]
    if name in DISK_PROGRAMS or name.startswith("mkfs."):
        return DISK_PROGRAMS.get(name, DISK_PROGRAMS["mkfs"])
    if name in POWER_PROGRAMS:
        return f"stops or restarts the machine ({name})"
    if name in ("chmod", "chown", "chgrp"):
        return _permissions_reason(name, arguments)
    if name in ("kill", "pkill", "killall") and any(arg in ("-1", "1") for arg in arguments):
        return "kills every process it can"
    if name == "tee" or name in ("cp", "mv", "install", "ln"):
        return _copy_reason(name, arguments)
    if name in PACKAGE_MANAGERS and arguments:
        subcommand = next((arg for arg in arguments if not arg.startswith("-")), "")
        if subcommand in PACKAGE_MANAGERS[name]:
            return f"downloads and installs packages from the network ({name} {subcommand})"
    if PYTHONS.match(name) and arguments[:2] and "-m" in arguments:
        module = arguments[arguments.index("-m") + 1] if arguments.index("-m") + 1 < len(arguments) else ""
        if module == "pip" and any(arg in ("install", "download") for arg in arguments):
            return "downloads and installs packages from the network (pip install)"
        if module in ("http.server", "smtpd"):
            return f"serves on the network ({name} -m {module})"
    if name in SHELLS and "-c" in arguments:
        index = arguments.index("-c")
        if index + 1 < len(arguments):
            return _command_reason(arguments[index + 1], depth=depth + 1)
    if name == "eval":
        return _command_reason(" ".join(arguments), depth=depth + 1)
    if PYTHONS.match(name) and "-c" in arguments:
        index = arguments.index("-c")
        if index + 1 < len(arguments):
            return python_risk_reason(arguments[index + 1])
    return None


def _rm_reason(arguments: list[str]) -> str | None:
    flags = _flags(arguments)
    recursive = bool(flags & {"r", "R", "--recursive"})
    force = bool(flags & {"f", "--force"})
    paths = [arg for arg in arguments if not arg.startswith("-")]
    if recursive and force:
        return "deletes files recursively without asking (rm -rf)"
    for path in paths:
        if path in ("/", "/*", "~", "*", ".", "..") or _outside(path):
            return f"deletes {path}" if not recursive else f"deletes {path} recursively"
    return None


def _git_reason(arguments: list[str]) -> str | None:
    # git's own options (-C dir, -c key=value) come before the subcommand
    position = 0
    while position < len(arguments) and arguments[position].startswith("-"):
        position += 2 if arguments[position] in ("-C", "-c") else 1
    if position >= len(arguments):
        return None
    subcommand, rest = arguments[position], arguments[position + 1 :]
    if subcommand == "push":
        forced = _flags(rest) & {"f", "--force", "--force-with-lease", "--mirror", "--delete", "d"}
        return (
            "force-pushes to a remote repository (git push --force)"
            if forced
            else "pushes to a remote repository"
        )
    if subcommand in ("clone", "fetch", "pull", "ls-remote") or (subcommand == "remote" and "update" in rest):
        return f"talks to a remote repository over the network (git {subcommand})"
    if subcommand == "reset" and "--hard" in rest:
        return "discards uncommitted changes (git reset --hard)"
    if subcommand == "clean" and _flags(rest) & {"f", "--force"}:
        return "deletes untracked files (git clean -f)"
    if subcommand in ("checkout", "restore") and ("." in rest):
        return f"discards uncommitted changes (git {subcommand} .)"
    return None


def _permissions_reason(name: str, arguments: list[str]) -> str | None:
    flags = _flags(arguments)
    modes = [arg for arg in arguments if not arg.startswith("-")]
    if name == "chmod" and modes and re.fullmatch(r"0?777|a\+rwx|o\+w|a\+w|ugo\+rwx", modes[0]):
        return f"makes files writable by everyone (chmod {modes[0]})"
    if name in ("chown", "chgrp") and flags & {"R", "--recursive"}:
        return f"changes the owner of a whole tree ({name} -R)"
    targets = modes[1:]
    for target in targets:
        if _outside(target):
            return f"changes permissions outside the workspace ({target})"
    return None


def _copy_reason(name: str, arguments: list[str]) -> str | None:
    paths = [arg for arg in arguments if not arg.startswith("-")]
    if name == "tee":
        targets = paths
    else:
        target_flag = next((arg for arg in arguments if arg.startswith("--target-directory=")), None)
        targets = [target_flag.split("=", 1)[1]] if target_flag else paths[-1:]
        if "-t" in arguments and arguments.index("-t") + 1 < len(arguments):
            targets = [arguments[arguments.index("-t") + 1]]
    for target in targets:
        if _outside(target):
            return f"writes outside the workspace ({target})"
    if name == "mv":
        for source in paths[:-1]:
            if _outside(source):
                return f"moves files from outside the workspace ({source})"
    return None
