"""Rendering in the sandbox: declared variables are checked before anything renders
(a missing one is an error naming it, never empty text; an undeclared one is
refused), escapes towards Python's internals are stopped, and a template cannot
run away with a worker's CPU or memory."""

import time

import pytest

from apps.core.errors import Invalid
from apps.prompts import file_defaults
from apps.prompts import variables as declared
from apps.prompts.rendering import MAX_OUTPUT, PromptError, check_body, render_body

TASK: list[dict[str, object]] = [
    {"name": "task", "type": "string"},
    {"name": "files", "type": "list", "required": False},
    {"name": "attempts", "type": "integer", "required": False, "default": 3},
    {"name": "user", "type": "object", "required": False},
]
BODY = (
    "Task: {{ task }}\n"
    "{% if files %}Files:\n{% for f in files %}- {{ f }}\n{% endfor %}{% endif %}"
    "You have {{ attempts }} attempts."
)


def render(body: str, values: dict[str, object], declarations: list[dict[str, object]] = TASK) -> str:
    return render_body(body, declared.normalize(declarations), values, template="fix-bug v1")


def error(body: str, values: dict[str, object], declarations: list[dict[str, object]] = TASK) -> PromptError:
    with pytest.raises(PromptError) as caught:
        render(body, values, declarations)
    return caught.value


def test_declared_variables_render_with_their_defaults_and_no_html_escaping() -> None:
    text = render(BODY, {"task": "Fix <b>parse()</b> & 'quote' handling", "files": ["a.py", "b.py"]})
    assert text == (
        "Task: Fix <b>parse()</b> & 'quote' handling\nFiles:\n- a.py\n- b.py\nYou have 3 attempts."
    )
    # Optional without a default: the type's empty value, so `{% if files %}` is false.
    assert render(BODY, {"task": "x", "attempts": 1}) == "Task: x\nYou have 1 attempts."


def test_a_missing_variable_is_an_error_naming_it_never_empty_text() -> None:
    failure = error(BODY, {"files": []})
    assert failure.code == "prompt_variable_missing"
    assert failure.message == "The template fix-bug v1 needs the variable 'task'."
    assert failure.status == 400


def test_an_undeclared_variable_is_refused_with_what_is_declared() -> None:
    failure = error(BODY, {"task": "x", "tsak": "typo"})
    assert failure.code == "prompt_variable_undeclared"
    assert "'tsak'" in failure.message
    assert "'task', 'files', 'attempts', 'user'" in failure.message


def test_a_value_of_the_wrong_type_is_refused() -> None:
    failure = error(BODY, {"task": "x", "attempts": "three"})
    assert failure.code == "prompt_variable_type"
    assert failure.message == "The variable 'attempts' of fix-bug v1 must be a integer, not a string."
    assert error(BODY, {"task": "x", "attempts": True}).code == "prompt_variable_type"


def test_a_missing_key_inside_a_value_is_an_error_with_the_line() -> None:
    failure = error("Hi\n{{ user.name }}", {"task": "x", "user": {"email": "a@b"}})
    assert failure.code == "prompt_undefined"
    assert failure.message == (
        "The template fix-bug v1 uses something undefined at line 2: 'dict object' has no attribute 'name'."
    )


def test_a_body_that_uses_an_undeclared_name_cannot_be_saved() -> None:
    with pytest.raises(PromptError) as caught:
        check_body("{{ task }} {{ repo }} {{ branch }}", declared.normalize(TASK))
    assert caught.value.code == "prompt_variable_undeclared"
    assert caught.value.field == "body"
    assert caught.value.message.startswith("The template uses 'branch', 'repo', which are not declared")


def test_a_syntax_error_names_the_line() -> None:
    with pytest.raises(PromptError) as caught:
        check_body("ok\n{% for f in files %}{{ f }}", declared.normalize(TASK), template="fix-bug")
    assert caught.value.code == "prompt_syntax_error"
    assert "line 2" in caught.value.message
    assert "endfor" in caught.value.message


@pytest.mark.parametrize(
    "body",
    [
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ task.__class__.__base__.__subclasses__() }}",
        "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
        "{{ lipsum.__globals__['os'].system('id') }}",
        "{{ namespace.__init__.__globals__ }}",
        "{{ files.append('x') }}{{ files }}",
        "{{ user.update({'a': 1}) }}",
        "{{ '{0.__class__.__mro__}'.format(task) }}",
        "{{ '%s' % task.__class__ }}",
        "{{ ''.__class__ }}",
    ],
)
def test_escapes_towards_python_internals_are_stopped(body: str) -> None:
    failure = error(body, {"task": "x", "files": [], "user": {}})
    assert failure.code == "prompt_unsafe", failure.message
    assert "not allowed" in failure.message
    assert "unsafe" in failure.message


def test_includes_and_imports_are_refused() -> None:
    for body in ["{% include 'x' %}", "{% extends 'base' %}", "{% import 'm' as m %}"]:
        with pytest.raises(PromptError) as caught:
            check_body(body, [])
        assert caught.value.code == "prompt_syntax_error"
        assert "templates stand alone" in caught.value.message


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ("{% for i in range(10**6) %}.{% endfor %}", "range() is limited"),
        ("{{ 'x' * 10**8 }}", "repeating makes more than"),
        ("{{ 2 ** 10000000 }}", "exponents are limited"),
        ("{% for i in range(10000) %}{% for j in range(10000) %}{% endfor %}{% endfor %}", "steps"),
        ("{% for i in range(10000) %}{{ 'y' * 1000 }}{% endfor %}", "output is longer than"),
        ("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", "recursed too deeply"),
    ],
)
def test_a_runaway_template_is_stopped_quickly(body: str, says: str) -> None:
    started = time.monotonic()
    failure = error(body, {"task": "x"})
    assert failure.code == "prompt_render_limit", failure.message
    assert says in failure.message
    assert time.monotonic() - started < 20


def test_output_up_to_the_limit_renders() -> None:
    text = render("{% for i in range(100) %}{{ 'z' * 9999 }}\n{% endfor %}", {"task": "x"})
    assert len(text) == 100 * 10_000 <= MAX_OUTPUT


def test_the_json_filter_writes_values_for_a_model_to_read() -> None:
    text = render("{{ user | json }}", {"task": "x", "user": {"name": "Zoë", "tags": ["<a>"]}})
    assert text == '{"name": "Zoë", "tags": ["<a>"]}'


@pytest.mark.parametrize(
    ("declarations", "says"),
    [
        ([{"name": "1x", "type": "string"}], "the name must start with a letter"),
        ([{"name": "loop", "type": "string"}], "reserved"),
        ([{"name": "a", "type": "str"}], "the type must be one of"),
        ([{"name": "a"}, {"name": "a"}], "declared twice"),
        ([{"name": "a", "required": True, "default": "x"}], "a required variable has no default"),
        (
            [{"name": "a", "type": "integer", "required": False, "default": "3"}],
            "the default is not a integer",
        ),
        ([{"name": "a", "typo": 1}], "unknown key 'typo'"),
        ("task", "Declare variables as a list"),
    ],
)
def test_bad_declarations_are_refused_on_the_variables_field(declarations: object, says: str) -> None:
    with pytest.raises(Invalid) as caught:
        declared.normalize(declarations)
    assert caught.value.field == "variables"
    assert says in caught.value.message


def test_declarations_round_trip_through_the_toml_lines_the_pages_show() -> None:
    declarations = declared.normalize(
        [
            {"name": "task", "type": "string", "description": 'Say "what"\nexactly'},
            {"name": "opts", "type": "object", "required": False, "default": {"a b": [1, 2.5, "ü"]}},
            {"name": "on", "type": "boolean", "required": False, "default": True},
        ]
    )
    text = declared.to_toml(declarations)
    assert text.splitlines()[0] == (
        'task = { type = "string", required = true, description = "Say \\"what\\"\\nexactly" }'
    )
    assert (
        text.splitlines()[1]
        == 'opts = { type = "object", required = false, default = { "a b" = [1, 2.5, "ü"] } }'
    )
    assert declared.from_toml(text) == declarations
    with pytest.raises(Invalid) as caught:
        declared.from_toml("task = {")
    assert "not valid TOML" in caught.value.message


def test_every_shipped_default_parses_and_renders_with_its_required_variables() -> None:
    names = [default.name for default in file_defaults.defaults()]
    assert {"agent.system", "context.summarize", "pr.description"} <= set(names)
    agent = file_defaults.default_get("agent.system")
    assert agent is not None
    assert [v["name"] for v in agent.variables if v["required"]] == ["task"]
    text = render_body(
        agent.body,
        agent.variables,
        {"task": "Make the tests pass", "tools": [{"name": "bash", "description": "Run a command"}]},
    )
    assert "sandboxed workspace at /workspace." in text
    assert "- bash: Run a command" in text
    assert text.rstrip().endswith("Your task:\nMake the tests pass")
    # The front matter is not part of the body.
    assert "{#" not in text
    assert "description =" not in text
