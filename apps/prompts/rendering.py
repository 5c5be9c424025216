"""Rendering prompt templates: Jinja2 in an immutable sandbox, strict about variables.

- Sandboxed: attribute and method access that could reach Python's internals
  (`''.__class__.__mro__`, `cycler.__init__.__globals__`, `x.append`) raises
  SecurityError, which we report as `prompt_unsafe`.
- StrictUndefined: a name or key that does not exist is an error naming it, never
  empty text; declared variables are bound first (apps/prompts/variables.py), so a
  missing or undeclared variable is refused before rendering starts.
- No autoescape: prompts are text, not HTML.
- Bounded: `range` at most 10,000 items, repetition (`'a' * n`) and powers capped,
  the output at most MAX_OUTPUT characters, and at most MAX_STEPS template
  statements per render (a trace counts them), so a template cannot hang or
  exhaust a worker.
"""

from __future__ import annotations

import functools
import json
import operator
import sys
import traceback
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from types import FrameType
from typing import Any, Final

from jinja2 import StrictUndefined, Template, TemplateSyntaxError, meta, nodes
from jinja2.exceptions import SecurityError, TemplateError, UndefinedError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from apps.core.errors import Invalid
from apps.prompts import variables as declared_variables

MAX_BODY: Final = 100_000
MAX_OUTPUT: Final = 1_000_000
MAX_RANGE: Final = 10_000
MAX_STEPS: Final = 500_000
# The file name Jinja gives the code it compiles from our templates: the trace
# counts steps in these frames only.
TEMPLATE_FILENAME: Final = "<prompt>"


class PromptError(Invalid):
    """A template cannot be rendered with these variables (400 with a stable code)."""

    code = "prompt_render_error"


class _RenderLimit(Exception):
    pass


def _safe_range(*args: int) -> range:
    result = range(*args)
    if len(result) > MAX_RANGE:
        raise _RenderLimit(f"range() is limited to {MAX_RANGE:,} items")
    return result


def _json(value: Any, indent: int | None = None) -> str:
    return json.dumps(value, ensure_ascii=False, indent=indent, default=str)


class PromptEnvironment(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Any, operator_name: str, left: Any, right: Any) -> Any:
        if operator_name == "*":
            for sequence, count in ((left, right), (right, left)):
                if (
                    isinstance(sequence, str | list | tuple)
                    and isinstance(count, int)
                    and len(sequence) * count > MAX_OUTPUT
                ):
                    raise _RenderLimit(f"repeating makes more than {MAX_OUTPUT:,} items")
            return operator.mul(left, right)
        if operator_name == "**":
            if isinstance(right, int | float) and abs(right) > 64:
                raise _RenderLimit("exponents are limited to 64")
            return operator.pow(left, right)
        return super().call_binop(context, operator_name, left, right)


def environment() -> PromptEnvironment:
    env = PromptEnvironment(
        undefined=StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        auto_reload=False,
        cache_size=400,
    )
    env.globals["range"] = _safe_range
    env.filters["json"] = _json
    return env


_ENVIRONMENT = environment()


def _subject(template: str) -> str:
    return f"The template {template}" if template else "The template"


def _syntax_error(template: str, exc: TemplateSyntaxError) -> PromptError:
    return PromptError(
        f"{_subject(template)} has a syntax error at line {exc.lineno}: {exc.message}.",
        code="prompt_syntax_error",
        field="body",
    )


def check_body(body: str, declarations: list[dict[str, Any]], *, template: str = "") -> None:
    """Refuse a body that does not parse, is too long, or uses names it does not declare."""
    if len(body) > MAX_BODY:
        raise PromptError(
            f"A template body has at most {MAX_BODY:,} characters.", code="prompt_too_long", field="body"
        )
    try:
        parsed = _ENVIRONMENT.parse(body)
    except TemplateSyntaxError as exc:
        raise _syntax_error(template, exc) from None
    for node in parsed.find_all((nodes.Extends, nodes.Include, nodes.Import, nodes.FromImport)):
        raise PromptError(
            f"{_subject(template)} uses {{% {type(node).__name__.lower()} %}} (line {node.lineno});"
            " templates stand alone.",
            code="prompt_syntax_error",
            field="body",
        )
    used = meta.find_undeclared_variables(parsed) - set(_ENVIRONMENT.globals)
    unknown = sorted(used - {declaration["name"] for declaration in declarations})
    if unknown:
        listed = ", ".join(repr(name) for name in unknown)
        raise PromptError(
            f"The template uses {listed}, which {'is' if len(unknown) == 1 else 'are'} not declared;"
            " declare every variable it uses.",
            code="prompt_variable_undeclared",
            field="body",
        )


@dataclass(frozen=True)
class RenderedPrompt:
    text: str
    name: str
    version: int | None  # None: the file default shipped with the platform
    source: str  # "organization" or "default"

    def __str__(self) -> str:
        return self.text


def _template_line(exc: BaseException) -> int | None:
    line = None
    for frame in traceback.extract_tb(exc.__traceback__):
        if frame.filename == TEMPLATE_FILENAME:
            line = frame.lineno
    return line


class _StepCounter:
    """Counts line events in template frames; other frames keep any tracer that was
    already installed (a debugger, coverage)."""

    def __init__(self, previous: Any) -> None:
        self.previous = previous
        self.steps = 0

    def global_trace(self, frame: FrameType, event: str, arg: Any) -> Callable[..., Any] | None:
        if frame.f_code.co_filename == TEMPLATE_FILENAME:
            return self.local_trace
        if self.previous is not None:
            result: Callable[..., Any] | None = self.previous(frame, event, arg)
            return result
        return None

    def local_trace(self, frame: FrameType, event: str, arg: Any) -> Callable[..., Any] | None:
        if event == "line":
            self.steps += 1
            if self.steps > MAX_STEPS:
                raise _RenderLimit(f"the template ran more than {MAX_STEPS:,} steps")
        return self.local_trace


def _render_chunks(chunks: Iterator[str]) -> str:
    parts: list[str] = []
    size = 0
    counter = _StepCounter(sys.gettrace())
    sys.settrace(counter.global_trace)
    try:
        for chunk in chunks:
            size += len(chunk)
            if size > MAX_OUTPUT:
                raise _RenderLimit(f"the output is longer than {MAX_OUTPUT:,} characters")
            parts.append(chunk)
    finally:
        sys.settrace(counter.previous)
    return "".join(parts)


@functools.lru_cache(maxsize=256)
def _compiled(body: str) -> Template:
    code = _ENVIRONMENT.compile(body, filename=TEMPLATE_FILENAME)
    return _ENVIRONMENT.template_class.from_code(_ENVIRONMENT, code, _ENVIRONMENT.make_globals(None), None)


def render_body(
    body: str,
    declarations: list[dict[str, Any]],
    values: Mapping[str, Any],
    *,
    template: str = "",
) -> str:
    """Render `body` with `values`, checked against `declarations`. Every failure is a
    PromptError (400) with a message that names the variable, line or limit."""
    bound = declared_variables.bind(declarations, values, template=template)
    subject = _subject(template)
    try:
        compiled = _compiled(body)
    except TemplateSyntaxError as exc:
        raise _syntax_error(template, exc) from None
    where = ""
    try:
        return _render_chunks(compiled.generate(bound))
    except SecurityError as exc:
        where = _at(exc)
        raise PromptError(
            f"{subject} tried something not allowed{where}: {_text(exc)}.", code="prompt_unsafe"
        ) from None
    except UndefinedError as exc:
        where = _at(exc)
        raise PromptError(
            f"{subject} uses something undefined{where}: {_text(exc)}.", code="prompt_undefined"
        ) from None
    except _RenderLimit as exc:
        raise PromptError(f"{subject} was stopped: {_text(exc)}.", code="prompt_render_limit") from None
    except (TemplateError, ArithmeticError, TypeError, ValueError, LookupError, AttributeError) as exc:
        where = _at(exc)
        raise PromptError(
            f"{subject} failed{where}: {type(exc).__name__}: {_text(exc)}.", code="prompt_render_error"
        ) from None
    except RecursionError:
        raise PromptError(f"{subject} recursed too deeply.", code="prompt_render_limit") from None


def _text(exc: BaseException) -> str:
    return str(exc).rstrip(".")


def _at(exc: BaseException) -> str:
    line = _template_line(exc)
    return f" at line {line}" if line else ""
