"""Merging (mcpfast.mux.merge): capabilities, instructions, list pages, the composite
cursor paging through several backends, and the list cache."""

from __future__ import annotations

import base64
import json

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mcpfast.mux.merge import (
    LIST_METHODS,
    BackendPage,
    BadBackendAnswer,
    InvalidCursor,
    ListCache,
    assemble_result,
    backend_client_capabilities,
    decode_cursor,
    dump_json,
    encode_cursor,
    initialize_result,
    load_json,
    merge_capabilities,
    merge_instructions,
    negotiate_version,
    next_cursor,
    plan_page,
    prepare_page,
    response_body,
)
from mcpfast.mux.names import NEVER, NameConflict, Namespace

BACKENDS = ("weather", "github", "files")


# --- initialize -----------------------------------------------------------------------------


def test_merge_capabilities_rules():
    caps = merge_capabilities(
        [
            {"tools": {"listChanged": True}, "logging": {}, "experimental": {"x": {}}},
            {"tools": {}, "prompts": {}, "resources": {"subscribe": True}, "tasks": {"list": {}}},
            {"resources": {"listChanged": True}, "completions": {}, "unknownThing": {}},
            None,  # a backend that failed (fail-open)
        ]
    )
    assert caps == {
        "tools": {"listChanged": True},
        "prompts": {},
        "resources": {"subscribe": True, "listChanged": True},
        "logging": {},
        "completions": {},
    }


def test_merge_capabilities_empty_and_odd_values():
    assert merge_capabilities([]) == {}
    assert merge_capabilities([{"tools": True, "prompts": {"listChanged": "yes"}}]) == {"prompts": {}}


def test_backend_client_capabilities():
    client = {"sampling": {}, "elicitation": {"form": {}, "url": {}}, "roots": {"listChanged": True},
              "tasks": {"list": {}}, "experimental": {"x": 1}}  # fmt: skip
    assert backend_client_capabilities(client) == {
        "sampling": {},
        "elicitation": {"form": {}, "url": {}},
        "roots": {"listChanged": True},
    }
    assert backend_client_capabilities(None) == {}


def test_negotiate_version():
    assert negotiate_version("2025-06-18") == "2025-06-18"
    assert negotiate_version("2024-11-05") == "2025-11-25"
    assert negotiate_version(None) == "2025-11-25"
    assert negotiate_version("x", ("a", "b")) == "a"


def test_merge_instructions():
    ns = Namespace(BACKENDS)
    text = merge_instructions(
        [("weather", "Use get_forecast for weather.\n"), ("github", None), ("files", "  ")], ns, preamble="Gateway."
    )
    assert text.startswith("Gateway.\n\n## weather\n")
    assert "`weather__<name>`" in text and "`mcpfast:weather/<uri>`" in text
    assert text.endswith("Use get_forecast for weather.")
    assert "github" not in text and "files" not in text
    assert merge_instructions([("a", None)]) is None
    plain = merge_instructions([("a", "hi")], Namespace(["a"]))
    assert plain == "## a\n\nhi"


def test_initialize_result():
    r = initialize_result("2025-06-18", {"name": "gw", "version": "1"}, {"tools": {}}, "hi")
    assert r == {
        "protocolVersion": "2025-06-18",
        "capabilities": {"tools": {}},
        "serverInfo": {"name": "gw", "version": "1"},
        "instructions": "hi",
    }
    assert "instructions" not in initialize_result("2025-06-18", {}, {}, None)


# --- cursor ------------------------------------------------------------------------------------


def test_cursor_round_trip():
    c = encode_cursor("tools/list", [("weather", "p2"), ("files", "")])
    assert set(c) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert decode_cursor("tools/list", c, BACKENDS) == [("weather", "p2"), ("files", "")]
    assert encode_cursor("tools/list", []) is None


def _b64(obj) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(obj)).rstrip(b"=").decode()


@pytest.mark.parametrize(
    "cursor",
    [
        "",
        "!!!",
        "abc=",
        "a",
        _b64("t"),
        _b64(["t"]),
        _b64(["t", "weather"]),
        _b64(["p", "weather", "x"]),  # a prompts cursor on tools/list
        _b64(["t", "nobody", "x"]),
        _b64(["t", "weather", "x", "weather", "y"]),
        _b64(["t", "weather", 5]),
        _b64({"t": 1}),
        base64.urlsafe_b64encode(b"\xff\xfe").decode(),
        "x" * 70000,
    ],
)
def test_bad_cursors(cursor):
    with pytest.raises(InvalidCursor) as ei:
        decode_cursor("tools/list", cursor, BACKENDS)
    assert ei.value.code == -32602


@settings(max_examples=300)
@given(
    st.sampled_from(list(LIST_METHODS)),
    st.lists(
        st.tuples(st.sampled_from(BACKENDS), st.text(max_size=30)), min_size=1, max_size=3, unique_by=lambda t: t[0]
    ),
)
def test_property_cursor_round_trip(method, positions):
    c = encode_cursor(method, positions)
    assert decode_cursor(method, c, BACKENDS) == positions
    for other in LIST_METHODS:
        if other != method:
            with pytest.raises(InvalidCursor):
                decode_cursor(other, c, BACKENDS)


# --- pages and paging over backends -------------------------------------------------------------


class FakeBackend:
    """A backend with a paginated tools list: ``pages`` lists of names."""

    def __init__(self, name: str, pages: list[list[str]], kind: str = "tools/list") -> None:
        self.name = name
        self.pages = pages
        self.kind = kind
        self.calls: list[str | None] = []

    def answer(self, cursor: str | None) -> dict:
        self.calls.append(cursor)
        i = 0 if cursor is None else int(cursor.removeprefix(f"{self.name}-page-"))
        key, field, _ = LIST_METHODS[self.kind]
        items = [
            {field: n, "description": f"{n} of {self.name}", "inputSchema": {"type": "object"}} for n in self.pages[i]
        ]
        result: dict = {key: items}
        if i + 1 < len(self.pages):
            result["nextCursor"] = f"{self.name}-page-{i + 1}"
        # the gateway gets bytes and parses them: do the same
        return orjson.loads(orjson.dumps(result))


def page_through(method, backends: dict[str, FakeBackend], ns: Namespace, cache: ListCache | None = None):
    """What the gateway does for a client paging through a merged list."""
    cursor = None
    client_pages = []
    while True:
        plan = plan_page(method, cursor, list(backends))
        pages = []
        for b, bc in plan:
            page = cache.get(b, method, bc) if cache else None
            if page is None:
                gen = cache.generation(b, method) if cache else 0
                page = prepare_page(method, b, backends[b].answer(bc), ns)
                if cache:
                    cache.put(b, method, bc, page, gen)
            pages.append(page)
        result = orjson.loads(assemble_result(method, pages))
        client_pages.append(result)
        cursor = result.get("nextCursor")
        if cursor is None:
            return client_pages


def test_paging_through_three_backends_with_several_pages():
    backends = {
        "weather": FakeBackend("weather", [["w1", "w2"], ["w3"], ["w4", "w5"]]),
        "github": FakeBackend("github", [["search"]]),
        "files": FakeBackend("files", [["read", "search"], []]),  # last page empty
    }
    ns = Namespace(list(backends))
    pages = page_through("tools/list", backends, ns)
    names = [[t["name"] for t in p["tools"]] for p in pages]
    assert names == [
        ["weather__w1", "weather__w2", "github__search", "files__read", "files__search"],
        ["weather__w3"],
        ["weather__w4", "weather__w5"],
    ]
    # each backend page fetched exactly once, in order
    assert backends["weather"].calls == [None, "weather-page-1", "weather-page-2"]
    assert backends["github"].calls == [None]
    assert backends["files"].calls == [None, "files-page-1"]
    # items other than the name are untouched
    assert pages[0]["tools"][0]["description"] == "w1 of weather"


def test_paging_one_backend_fails_midway():
    backends = {
        "weather": FakeBackend("weather", [["w1"], ["w2"]]),
        "github": FakeBackend("github", [["g1"], ["g2"], ["g3"]]),
    }
    ns = Namespace(list(backends))
    c1 = next_cursor("tools/list", [prepare_page("tools/list", b, backends[b].answer(None), ns) for b in backends])
    plan = plan_page("tools/list", c1, list(backends))
    assert plan == [("weather", "weather-page-1"), ("github", "github-page-1")]
    # fail-open: weather does not answer page 2; only github's page goes out, and the
    # cursor continues with github alone
    pages = [prepare_page("tools/list", "github", backends["github"].answer("github-page-1"), ns)]
    c2 = orjson.loads(assemble_result("tools/list", pages))["nextCursor"]
    assert plan_page("tools/list", c2, list(backends)) == [("github", "github-page-2")]


@pytest.mark.parametrize("method", list(LIST_METHODS))
def test_every_list_kind_is_namespaced(method):
    key, field, _ = LIST_METHODS[method]
    ns = Namespace(BACKENDS)
    b = FakeBackend("files", [["file:///a" if field != "name" else "x"]], kind=method)
    page = prepare_page(method, "files", b.answer(None), ns)
    [item] = page.items()
    expected = "files__x" if field == "name" else "mcpfast:files/file:///a"
    assert item[field] == expected
    assert orjson.loads(assemble_result(method, [page])) == {key: [item]}


def test_resources_feed_the_index_even_when_prefixed():
    ns = Namespace(BACKENDS)
    prepare_page("resources/list", "files", {"resources": [{"uri": "file:///a", "name": "a"}]}, ns)
    prepare_page(
        "resources/templates/list", "github", {"resourceTemplates": [{"uriTemplate": "repo://{o}", "name": "r"}]}, ns
    )
    assert ns.resolve_uri("file:///a") == ("files", "file:///a")  # e.g. from a resource_link
    assert ns.resolve_uri("repo://me") == ("github", "repo://me")


def test_never_mode_refuses_duplicates_and_fills_table():
    ns = Namespace(BACKENDS, mode=NEVER)
    prepare_page("tools/list", "weather", {"tools": [{"name": "forecast"}, {"name": "search"}]}, ns)
    p = prepare_page("tools/list", "files", {"tools": [{"name": "read"}]}, ns)
    assert p.items() == [{"name": "read"}]  # names unchanged
    assert ns.resolve_name("tool", "forecast") == ("weather", "forecast")
    with pytest.raises(NameConflict) as ei:
        prepare_page("tools/list", "github", {"tools": [{"name": "issue"}, {"name": "search"}]}, ns)
    assert ei.value.name == "search"
    assert ns.resolve_name("tool", "issue") is None  # the refused page left nothing behind
    # the same backend listing again (a refresh) is fine
    prepare_page("tools/list", "weather", {"tools": [{"name": "forecast"}, {"name": "search"}]}, ns)


@pytest.mark.parametrize(
    "result",
    [None, [], {}, {"tools": {}}, {"tools": [], "nextCursor": 5}, "x"],
)
def test_bad_backend_pages(result):
    with pytest.raises(BadBackendAnswer):
        prepare_page("tools/list", "weather", result, Namespace(BACKENDS))


def test_malformed_items_are_dropped_and_empty_cursor_ends():
    page = prepare_page(
        "tools/list",
        "weather",
        {"tools": [{"name": "ok"}, {"name": 5}, "junk", {"noname": 1}], "nextCursor": ""},
        Namespace(BACKENDS),
    )
    assert page.items() == [{"name": "weather__ok"}] and page.count == 1 and page.next_cursor is None


def test_assemble_and_response_body():
    p1 = BackendPage("a", b'{"name":"x"}', 1, "c")
    p2 = BackendPage("b", b"", 0, None)
    r = assemble_result("tools/list", [p1, p2])
    obj = orjson.loads(r)
    assert obj["tools"] == [{"name": "x"}] and decode_cursor("tools/list", obj["nextCursor"], ["a", "b"]) == [
        ("a", "c")
    ]
    assert orjson.loads(assemble_result("tools/list", [p2])) == {"tools": []}
    body = response_body(7, r)
    assert orjson.loads(body) == {"jsonrpc": "2.0", "id": 7, "result": obj}
    assert orjson.loads(response_body("s", b"{}"))["id"] == "s"
    assert json.loads(response_body(2**70, b"{}"))["id"] == 2**70


def test_json_helpers_keep_big_integers():
    text = b'{"a":123456789012345678901234567890,"b":1.5,"c":"1234567890123456789012"}'
    obj = load_json(text)
    assert obj["a"] == 123456789012345678901234567890 and isinstance(obj["a"], int)
    assert load_json(dump_json(obj)) == obj
    assert dump_json({"x": 1}) == b'{"x":1}'
    # through a list page: an inputSchema with a huge bound survives exactly
    page = prepare_page(
        "tools/list",
        "a",
        load_json(b'{"tools":[{"name":"t","inputSchema":{"maximum":99999999999999999999999}}]}'),
        Namespace(["a"]),
    )
    assert json.loads(b"[" + page.items_json + b"]")[0]["inputSchema"]["maximum"] == 99999999999999999999999


# --- cache -------------------------------------------------------------------------------------


def test_cache_hits_and_invalidation_by_notification():
    backends = {"weather": FakeBackend("weather", [["w1"], ["w2"]]), "github": FakeBackend("github", [["g1"]])}
    ns = Namespace(list(backends))
    cache = ListCache()
    first = page_through("tools/list", backends, ns, cache)
    again = page_through("tools/list", backends, ns, cache)
    assert first == again
    assert backends["weather"].calls == [None, "weather-page-1"] and backends["github"].calls == [None]
    assert cache.hits == 3 and cache.size == 3
    # github's tools change
    backends["github"].pages = [["g1", "g2"]]
    assert cache.on_notification("github", "notifications/tools/list_changed") == ("tools/list",)
    after = page_through("tools/list", backends, ns, cache)
    assert [t["name"] for t in after[0]["tools"]] == ["weather__w1", "github__g1", "github__g2"]
    assert backends["github"].calls == [None, None] and backends["weather"].calls == [None, "weather-page-1"]
    # other notifications change nothing
    assert cache.on_notification("github", "notifications/message") == ()
    assert cache.on_notification("github", "notifications/prompts/list_changed") == ("prompts/list",)
    assert cache.get("github", "tools/list", None) is not None


def test_resources_list_changed_invalidates_templates_too():
    cache = ListCache()
    page = BackendPage("a", b"", 0, None)
    for m in ("resources/list", "resources/templates/list", "tools/list"):
        cache.put("a", m, None, page, cache.generation("a", m))
    assert cache.on_notification("a", "notifications/resources/list_changed") == (
        "resources/list",
        "resources/templates/list",
    )
    assert cache.get("a", "resources/list", None) is None
    assert cache.get("a", "resources/templates/list", None) is None
    assert cache.get("a", "tools/list", None) is page


def test_cache_generation_race():
    cache = ListCache()
    page = BackendPage("a", b"", 0, None)
    gen = cache.generation("a", "tools/list")  # fetch starts
    cache.invalidate("a", ["tools/list"])  # list_changed arrives meanwhile
    assert cache.put("a", "tools/list", None, page, gen) is False  # stale answer not stored
    assert cache.get("a", "tools/list", None) is None
    gen = cache.generation("a", "tools/list")
    assert cache.put("a", "tools/list", None, page, gen) is True
    assert cache.get("a", "tools/list", None) is page
    cache.invalidate("a")  # every list of that scope
    assert cache.get("a", "tools/list", None) is None


def test_cache_scopes_are_separate():
    cache = ListCache()
    page = BackendPage("a", b"", 0, None)
    cache.put(("/r1", "a"), "tools/list", None, page, 0)
    cache.invalidate(("/r2", "a"))
    assert cache.get(("/r1", "a"), "tools/list", None) is page


def test_cache_ttl():
    now = [100.0]
    cache = ListCache(ttl=10, clock=lambda: now[0])
    page = BackendPage("a", b"", 0, None)
    cache.put("a", "tools/list", None, page, 0)
    now[0] = 109.9
    assert cache.get("a", "tools/list", None) is page
    now[0] = 110.0
    assert cache.get("a", "tools/list", None) is None and cache.size == 0


def test_cache_bounded_and_eviction_is_race_safe():
    cache = ListCache(max_entries=4)
    page = BackendPage("a", b"", 0, None)
    stale_gen = cache.generation("s0", "tools/list")
    cache.invalidate("s0", ["tools/list"])
    for i in range(10):
        cache.put(f"s{i + 1}", "tools/list", None, page, cache.generation(f"s{i + 1}", "tools/list"))
        assert cache.size <= 4
    # s0's slot was evicted after its invalidation; a fetch that began before the
    # invalidation still cannot store
    assert cache.put("s0", "tools/list", None, page, stale_gen) is False
    assert cache.put("s0", "tools/list", None, page, cache.generation("s0", "tools/list")) is True
    # empty slots left by invalidations are bounded too
    for i in range(100):
        cache.invalidate(f"gone{i}")
    assert len(cache._slots) <= 2 * 4 + 4


def test_page_keeps_backend_names_and_filters_into_a_new_page():
    ns = Namespace(("alpha", "beta"))
    page = prepare_page("tools/list", "alpha", {"tools": [{"name": "a"}, {"name": "b"}, {"name": "c"}]}, ns)
    assert page.names == ("a", "b", "c")
    items = page.items_json
    kept = page.keeping([True, False, True])
    assert [t["name"] for t in kept.items()] == ["alpha__a", "alpha__c"]
    assert kept.names == ("a", "c") and kept.count == 2 and kept.backend == "alpha"
    assert page.items_json == items and page.count == 3  # the (cached) page is untouched
    assert page.keeping([False, False, False]).items_json == b""
