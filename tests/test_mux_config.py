"""Configuration of multiplexed routes: accepted keys, defaults, and errors that name
the key at fault."""

from __future__ import annotations

import pytest

from mcpfast.config import ConfigError, as_dict, build_config
from mcpfast.mux.token import new_key_text, parse_key

BACKENDS = {"a": {"url": "http://127.0.0.1:1/mcp"}, "b": {"url": "http://127.0.0.1:2/mcp"}}


def _cfg(route: dict | None = None, **top):
    r = {"path": "/mcp", "backends": ["a", "b"], **(route or {})}
    return build_config({"backends": BACKENDS, "routes": [r], **top})


def test_defaults_and_ephemeral_key():
    m = _cfg().routes[0].mux
    assert m.namespacing == "multi" and m.separator == "__" and m.fail_mode == "open"
    assert m.list_cache == "session" and m.server_name == "mcpfast"
    assert len(m.session_key) == 32 and m.ephemeral_key
    # Made up once per process: every route and reload shares it (forked workers too).
    assert _cfg().routes[0].mux.session_key == m.session_key


def test_single_backend_route_has_no_mux_and_refuses_mux_keys():
    c = build_config({"backends": BACKENDS, "routes": [{"path": "/x", "backend": "a"}]})
    assert c.routes[0].mux is None
    with pytest.raises(ConfigError) as ei:
        build_config({"backends": BACKENDS, "routes": [{"path": "/x", "backend": "a", "separator": "_"}]})
    assert ei.value.key == "routes[0].separator"


def test_keys_from_sessions_section_route_and_file(tmp_path):
    k1, k2, k3 = new_key_text(), new_key_text(), new_key_text()
    m = _cfg(sessions={"key": k1, "old_keys": [k2], "max_age": 60}).routes[0].mux
    assert m.session_key == parse_key(k1) and m.old_keys == (parse_key(k2),) and m.max_age == 60
    assert not m.ephemeral_key
    f = tmp_path / "route.key"
    f.write_text("# rotated 2025\n" + k3 + "\n")
    m = _cfg({"session_key_file": str(f), "old_keys": []}, sessions={"key": k1, "old_keys": [k2]}).routes[0].mux
    assert m.session_key == parse_key(k3) and m.old_keys == ()
    d = as_dict(_cfg(sessions={"key": k1}))
    assert d["routes"][0]["mux"]["session_key"] == "<redacted>"


@pytest.mark.parametrize(
    "route, top, key",
    [
        ({"namespacing": "sometimes"}, {}, "routes[0].namespacing"),
        ({"separator": "::"}, {}, "routes[0].separator"),
        ({"separator": ""}, {}, "routes[0].separator"),
        ({"uri_scheme": "1bad"}, {}, "routes[0].uri_scheme"),
        ({"fail_mode": "maybe"}, {}, "routes[0].fail_mode"),
        ({"list_cache": "always"}, {}, "routes[0].list_cache"),
        ({"list_cache_ttl": -1}, {}, "routes[0].list_cache_ttl"),
        ({"server_name": ""}, {}, "routes[0].server_name"),
        ({"session_key": "short"}, {}, "routes[0].session_key"),
        ({"session_key_file": "/nonexistent/key"}, {}, "routes[0].session_key_file"),
        ({"old_keys": ["nope"]}, {}, "routes[0].old_keys[0]"),
        ({"backends": ["a", "a"]}, {}, "routes[0].backends"),
        ({}, {"sessions": {"key": "zz"}}, "sessions.key"),
        ({}, {"sessions": {"max_age": -5}}, "sessions.max_age"),
        ({}, {"sessions": {"colour": 1}}, "sessions.colour"),
    ],
)
def test_bad_values_name_their_key(route, top, key):
    with pytest.raises(ConfigError) as ei:
        _cfg(route, **top)
    assert ei.value.key == key


def test_backend_names_that_make_splitting_ambiguous_are_refused():
    backends = {**BACKENDS, "a_b": {"url": "http://127.0.0.1:3/mcp"}}
    with pytest.raises(ConfigError) as ei:
        build_config({"backends": backends, "routes": [{"path": "/m", "backends": ["a", "a_b"], "separator": "_"}]})
    assert ei.value.key == "routes[0].backends"
