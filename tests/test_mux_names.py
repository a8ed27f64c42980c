"""Namespacing (mcpfast.mux.names): separators, modes, name and URI round trips, tables."""

from __future__ import annotations

import re

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from mcpfast.mux.names import (
    ALWAYS,
    MULTI,
    NEVER,
    NameConflict,
    Namespace,
    NameTable,
    ResourceIndex,
    check_backend_names,
    template_regex,
    validate_separator,
)

BACKENDS = ("weather", "github", "files")


@pytest.mark.parametrize("sep", ["__", "_", ".", "-", "--", "_x_", "a", "..", "12345678"])
def test_separator_ok(sep):
    assert validate_separator(sep) == sep


@pytest.mark.parametrize("sep", ["", " ", "/", ":", "__:", "::", "ü", "a b", "123456789", "\n", "~", None, 5])
def test_separator_refused(sep):
    with pytest.raises(ValueError):
        validate_separator(sep)


def test_ambiguous_backend_names():
    check_backend_names(["a", "b"], "_")
    check_backend_names(["a", "ab"], "_")  # "a_" is no prefix of "ab_"
    with pytest.raises(ValueError, match="ambiguous"):
        check_backend_names(["a", "a_b"], "_")
    with pytest.raises(ValueError, match="ambiguous"):
        check_backend_names(["x.y", "x"], ".")
    with pytest.raises(ValueError, match="ambiguous"):
        check_backend_names(["a_", "a"], "__")  # "a__" is a prefix of "a___"
    check_backend_names(["a_", "a"], "-")
    with pytest.raises(ValueError):
        check_backend_names(["a", "a"], "_")
    with pytest.raises(ValueError):
        check_backend_names(["a/b"], "_")


def test_modes():
    assert Namespace(["a"], mode=MULTI).prefixed is False
    assert Namespace(["a", "b"], mode=MULTI).prefixed is True
    assert Namespace(["a"], mode=ALWAYS).prefixed is True
    assert Namespace(["a", "b"], mode=NEVER).prefixed is False
    with pytest.raises(ValueError):
        Namespace(["a"], mode="sometimes")
    with pytest.raises(ValueError):
        Namespace([])
    with pytest.raises(ValueError):
        Namespace(["a"], uri_scheme="1abc")
    with pytest.raises(ValueError):
        Namespace(["a", "a_b"], separator="_")


def test_expose_and_split_names():
    ns = Namespace(BACKENDS)
    assert ns.expose_name("weather", "get_forecast") == "weather__get_forecast"
    assert ns.split_name("weather__get_forecast") == ("weather", "get_forecast")
    assert ns.split_name("weather__") == ("weather", "")
    assert ns.split_name("weather__a__b") == ("weather", "a__b")
    assert ns.split_name("nobody__x") is None
    assert ns.split_name("weather_x") is None
    assert ns.split_name("__weather__x") is None
    assert ns.split_name("") is None
    assert ns.resolve_name("tool", "github__search") == ("github", "search")
    assert ns.resolve_name("tool", "search") is None


def test_split_with_separator_chars_in_backend_names():
    ns = Namespace(["_a", "b_c", "d"], separator="_")
    assert ns.split_name("_a_x") == ("_a", "x")
    assert ns.split_name("b_c_x_y") == ("b_c", "x_y")
    assert ns.split_name("d__") == ("d", "_")
    assert ns.split_name("b_x") is None


def test_single_backend_unprefixed_routes_everything():
    ns = Namespace(["only"])
    assert ns.resolve_name("tool", "anything") == ("only", "anything")
    assert ns.resolve_name("prompt", "p") == ("only", "p")
    assert ns.resolve_uri("file:///x") == ("only", "file:///x")
    assert ns.resolve_template("file:///{path}") == ("only", "file:///{path}")
    assert ns.expose_name("only", "t") == "t" and ns.expose_uri("only", "u") == "u"


def test_never_mode_routes_by_table():
    ns = Namespace(BACKENDS, mode=NEVER)
    assert ns.resolve_name("tool", "get_forecast") is None
    ns.tools.add("weather", "get_forecast")
    ns.prompts.add("github", "review")
    assert ns.resolve_name("tool", "get_forecast") == ("weather", "get_forecast")
    assert ns.resolve_name("prompt", "review") == ("github", "review")
    assert ns.resolve_name("prompt", "get_forecast") is None
    with pytest.raises(NameConflict) as ei:
        ns.tools.add("github", "get_forecast")
    assert ei.value.backends == ("weather", "github") and "namespacing" in str(ei.value)
    ns.forget("weather", "tools/list")
    assert ns.resolve_name("tool", "get_forecast") is None
    ns.tools.add("github", "get_forecast")  # free again
    assert ns.resolve_name("tool", "get_forecast") == ("github", "get_forecast")


def test_name_table_check_is_atomic():
    t = NameTable("tool")
    t.add("a", "x")
    with pytest.raises(NameConflict):
        t.check("b", ["y", "x"])
    assert t.get("y") is None and len(t) == 1
    t.check("a", ["x", "x", "z"])  # own names and repeats within a backend are fine


# --- URIs ---------------------------------------------------------------------------------


def test_uri_scheme():
    ns = Namespace(BACKENDS)
    u = ns.expose_uri("files", "file:///etc/hosts")
    assert u == "mcpfast:files/file:///etc/hosts"
    assert ns.split_uri(u) == ("files", "file:///etc/hosts")
    assert ns.split_uri("MCPFAST:files/x") == ("files", "x")  # RFC 3986 §3.1: case-insensitive scheme
    assert ns.split_uri("mcpfast:nobody/x") is None
    assert ns.split_uri("mcpfast:files") is None
    assert ns.split_uri("file:///etc/hosts") is None
    assert ns.split_uri("mcpfast+files:x") is None
    assert ns.expose_uri("files", "") == "mcpfast:files/"
    assert ns.split_uri("mcpfast:files/") == ("files", "")
    # templates keep their expressions for the client to expand
    t = ns.expose_uri("github", "repo://{owner}/{repo}/issues{?state}")
    assert t == "mcpfast:github/repo://{owner}/{repo}/issues{?state}"
    expanded = t.replace("{owner}", "me").replace("{repo}", "x").replace("{?state}", "?state=open")
    assert ns.split_uri(expanded) == ("github", "repo://me/x/issues?state=open")


def test_exposed_uri_is_an_rfc3986_uri():
    # RFC 3986 Appendix B regex: scheme is the part before the first ':' and must be
    # ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )
    ns = Namespace(BACKENDS)
    u = ns.expose_uri("weather", "https://api.example/v1?q=1#frag")
    m = re.match(r"^(([^:/?#]+):)?(//([^/?#]*))?([^?#]*)(\?([^#]*))?(#(.*))?", u)
    assert m.group(2) == "mcpfast" and m.group(4) is None  # no authority: an opaque path


def test_unprefixed_uris_fall_back_to_the_index():
    ns = Namespace(BACKENDS)
    assert ns.resolve_uri("file:///a.txt") is None
    ns.resources.add_uri("files", "file:///a.txt")
    ns.resources.add_template("github", "repo://{owner}/{repo}")
    assert ns.resolve_uri("file:///a.txt") == ("files", "file:///a.txt")
    assert ns.resolve_uri("repo://me/x") == ("github", "repo://me/x")
    assert ns.resolve_uri("other://x") is None
    # prefixed URIs never consult the index
    assert ns.resolve_uri("mcpfast:weather/file:///a.txt") == ("weather", "file:///a.txt")


def test_never_mode_uris_and_templates():
    ns = Namespace(BACKENDS, mode=NEVER)
    ns.resources.add_template("files", "file:///{+path}")
    ns.resources.add_template("weather", "weather://{city}")
    assert ns.resolve_uri("file:///etc/x") == ("files", "file:///etc/x")
    assert ns.resolve_template("weather://{city}") == ("weather", "weather://{city}")
    assert ns.resolve_template("nope://{x}") is None
    ns.forget("files", "resources/templates/list")
    assert ns.resolve_uri("file:///etc/x") is None


def test_resource_index_template_order_follows_route():
    idx = ResourceIndex(["first", "second"])
    idx.add_template("second", "x://{a}")
    idx.add_template("first", "x://{b}")
    assert idx.resolve("x://1") == "first"
    idx.add_uri("second", "x://exact")
    assert idx.resolve("x://exact") == "second"
    idx.forget("first")
    assert idx.resolve("x://1") == "second"
    idx.forget("second", templates=False)
    assert idx.resolve("x://exact") == "second"  # via the template now
    assert idx.owner_of_uri("x://exact") is None


@pytest.mark.parametrize(
    "template,uri,ok",
    [
        ("file:///{path}", "file:///a", True),
        ("file:///{path}", "file:///a/b/c", True),
        ("file:///{path}", "http:///a", False),
        ("a://{x}/b", "a://1/b", True),
        ("a://{x}/b", "a://1/c", False),
        ("a://x.y{?q,r}", "a://x.y?q=1&r=2", True),
        ("a://x.y{?q,r}", "a://xzy", False),  # the '.' is literal
        ("lit", "lit", True),
        ("lit", "lit2", False),
        ("{x}", "", True),
    ],
)
def test_template_regex(template, uri, ok):
    assert bool(template_regex(template).match(uri)) is ok


# --- properties ----------------------------------------------------------------------------

_name = st.from_regex(r"[A-Za-z0-9_.-]{1,10}", fullmatch=True)
_sep = st.from_regex(r"[A-Za-z0-9_.-]{1,4}", fullmatch=True)


@st.composite
def namespaces(draw):
    sep = draw(_sep)
    names = draw(st.lists(_name, min_size=1, max_size=5, unique=True))
    try:
        check_backend_names(names, sep)
    except ValueError:
        assume(False)
    mode = draw(st.sampled_from([ALWAYS, MULTI]))
    return Namespace(names, separator=sep, mode=mode)


@settings(max_examples=400)
@given(namespaces(), st.data())
def test_property_name_round_trip(ns, data):
    backend = data.draw(st.sampled_from(ns.backends))
    name = data.draw(st.text(max_size=30))
    exposed = ns.expose_name(backend, name)
    if ns.prefixed:
        assert ns.split_name(exposed) == (backend, name)
    assert ns.resolve_name("tool", exposed) == (backend, name)


@settings(max_examples=400)
@given(namespaces(), st.data())
def test_property_uri_round_trip(ns, data):
    backend = data.draw(st.sampled_from(ns.backends))
    uri = data.draw(st.text(max_size=60))
    exposed = ns.expose_uri(backend, uri)
    assert ns.resolve_uri(exposed) == (backend, uri)
    if ns.prefixed:
        assert ns.split_uri(exposed) == (backend, uri)


@settings(max_examples=300)
@given(namespaces(), st.text(max_size=40))
def test_property_split_is_consistent(ns, s):
    """Whatever a client sends, a successful split names a configured backend and, in a
    prefixing route, exposes back to the very same string."""
    for hit, expose in ((ns.split_name(s), ns.expose_name), (ns.split_uri(s), ns.expose_uri)):
        if hit is None:
            continue
        assert hit[0] in ns.backends
        if ns.prefixed and (expose is ns.expose_name or s.startswith(ns.scheme + ":")):
            assert expose(*hit) == s
