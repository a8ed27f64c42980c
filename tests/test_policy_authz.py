"""Authorization rules: every match condition, first match wins, defaults and open
methods, step-up scopes, the decision memo, and filtered list answers."""

from __future__ import annotations

from types import MappingProxyType

import orjson
import pytest

from mcpfast.config import ConfigError
from mcpfast.policy import Authorizer, Principal, build_policy_config, compile_globs
from mcpfast.policy.principal import KIND_ANONYMOUS, KIND_APIKEY, KIND_JWT


def authz(*rules, **opts) -> Authorizer:
    sec = {"rules": list(rules), **opts}
    return Authorizer(build_policy_config({"authz": sec}).authz)


def jwt_p(sub="alice", ip="10.0.0.1", scopes=(), **claims) -> Principal:
    return Principal(sub, KIND_JWT, f"jwt:iss|{sub}", ip, frozenset(scopes), MappingProxyType(claims), issuer="iss")


def key_p(sub="bot", ip="10.0.0.1", **attrs) -> Principal:
    return Principal(sub, KIND_APIKEY, f"apikey:{sub}", ip, attributes=MappingProxyType(attrs))


ALICE = jwt_p("alice", groups=["eng", "admins"], org="acme", realm_access={"roles": ["ops"]})
BOB = jwt_p("bob", groups=["sales"], org="acme")
ANON = Principal("anonymous", KIND_ANONYMOUS, "anonymous", "203.0.113.5")


def allowed(z, p, method="tools/call", name="echo", backend="b1") -> bool:
    return z.check(p, method, name, backend).allowed


# ---------------------------------------------------------------------------------
# Globs


@pytest.mark.parametrize(
    "pats,yes,no",
    [
        (["echo"], ["echo"], ["echo2", "Echo", ""]),
        (["weather.*"], ["weather.get", "weather.a.b"], ["weather", "xweather.get"]),
        (["get_?"], ["get_a"], ["get_ab", "get_"]),
        (["[ab]*", "exact"], ["apple", "banana", "exact"], ["cherry", "exactly"]),
        (["*"], ["anything", ""], []),
        (["file:///docs/*"], ["file:///docs/a/b.md"], ["file:///etc/passwd"]),
        (["a.b"], ["a.b"], ["axb"]),  # dots are literal
    ],
)
def test_globs(pats, yes, no):
    m = compile_globs(pats)
    assert all(m(s) for s in yes) and not any(m(s) for s in no)


# ---------------------------------------------------------------------------------
# Principal conditions


def test_subjects_kinds_and_default():
    z = authz({"effect": "allow", "subjects": ["ali*"], "kinds": ["jwt"]})
    assert allowed(z, ALICE)
    assert not allowed(z, BOB)
    assert not allowed(z, key_p("alice"))  # an API key named alice is not the JWT alice
    d = z.check(BOB, "tools/call", "echo", "b1")
    assert (d.allowed, d.rule_id, d.reason) == (False, None, "default")


def test_claims_any_of_values_and_dotted_paths():
    z = authz(
        {"id": "admins", "effect": "allow", "claims": {"groups": ["admins", "root"]}},
        {"id": "ops", "effect": "allow", "claims": {"realm_access.roles": "ops", "org": "acme"}},
    )
    assert z.check(ALICE, "tools/call", "x", None).rule_id == "admins"
    assert not allowed(z, BOB)
    carol = jwt_p("carol", realm_access={"roles": ["ops"]}, org="acme")
    assert z.check(carol, "tools/call", "x", None).rule_id == "ops"
    dave = jwt_p("dave", realm_access={"roles": ["ops"]}, org="other")
    assert not allowed(z, dave)


def test_claim_names_with_dots_and_scalar_types():
    z = authz({"effect": "allow", "claims": {"https://example.com/roles": "admin", "email_verified": True}})
    p = jwt_p("x", **{"https://example.com/roles": ["admin"], "email_verified": True})
    assert allowed(z, p)
    assert not allowed(z, jwt_p("y", **{"https://example.com/roles": ["admin"], "email_verified": False}))


def test_scopes_all_required():
    z = authz({"effect": "allow", "scopes": ["mcp:read", "mcp:tools"]})
    assert allowed(z, jwt_p("a", scopes=["mcp:read", "mcp:tools", "x"]))
    assert not allowed(z, jwt_p("b", scopes=["mcp:read"]))


def test_api_key_attributes():
    z = authz({"effect": "allow", "attributes": {"team": ["data", "ml"]}})
    assert allowed(z, key_p(team="data"))
    assert allowed(z, key_p(team=("ml", "x")))
    assert not allowed(z, key_p(team="web"))
    assert not allowed(z, ALICE)


def test_client_ips_and_cidrs():
    z = authz({"effect": "allow", "client_ips": ["10.0.0.0/8", "192.0.2.7", "2001:db8::/32"]})
    assert allowed(z, jwt_p(ip="10.200.1.1"))
    assert allowed(z, jwt_p(ip="192.0.2.7"))
    assert allowed(z, jwt_p(ip="::ffff:10.1.2.3"))  # IPv4-mapped
    assert allowed(z, jwt_p(ip="2001:db8::1"))
    assert not allowed(z, jwt_p(ip="192.0.2.8"))
    assert not allowed(z, jwt_p(ip="unix-socket"))


# ---------------------------------------------------------------------------------
# Operation conditions


def test_tools_prompts_resources_and_backends():
    z = authz(
        {"id": "t", "effect": "allow", "tools": ["weather.*"], "backends": ["b1"]},
        {"id": "p", "effect": "allow", "prompts": ["summarize"]},
        {"id": "r", "effect": "allow", "resources": ["file:///docs/*"]},
    )
    assert z.check(ALICE, "tools/call", "weather.get", "b1").rule_id == "t"
    assert not allowed(z, ALICE, "tools/call", "weather.get", "b2")
    assert not allowed(z, ALICE, "tools/call", "shell.exec", "b1")
    assert not allowed(z, ALICE, "tools/call", None, "b1")  # a name condition needs a name
    assert z.check(ALICE, "prompts/get", "summarize", "b9").rule_id == "p"
    assert not allowed(z, ALICE, "prompts/get", "weather.get", "b1")  # tool rules do not cover prompts
    for m in ("resources/read", "resources/subscribe", "resources/unsubscribe"):
        assert z.check(ALICE, m, "file:///docs/x.md", None).rule_id == "r"
    assert not allowed(z, ALICE, "resources/read", "file:///etc/passwd", None)


def test_methods_with_names_and_method_globs():
    z = authz(
        {"id": "deny-admin", "effect": "deny", "methods": ["tools/*"], "names": ["admin_*"]},
        {"id": "completions", "effect": "allow", "methods": ["completion/complete"]},
        {"id": "tasks", "effect": "allow", "methods": ["tasks/*"]},
        {"id": "all-tools", "effect": "allow", "methods": ["tools/call"]},
    )
    assert z.check(ALICE, "tools/call", "admin_reset", None).rule_id == "deny-admin"
    assert z.check(ALICE, "tools/call", "echo", None).rule_id == "all-tools"
    assert z.check(ALICE, "completion/complete", None, None).rule_id == "completions"
    assert z.check(ALICE, "tasks/get", None, None).rule_id == "tasks"
    assert not allowed(z, ALICE, "sampling/whatever", None)


def test_first_match_wins():
    z = authz(
        {"id": "deny-bob", "effect": "deny", "subjects": ["bob"]},
        {"id": "allow-all", "effect": "allow"},
        {"id": "never", "effect": "deny"},
    )
    assert z.check(BOB, "tools/call", "echo", None).rule_id == "deny-bob"
    assert z.check(ALICE, "tools/call", "echo", None).rule_id == "allow-all"


def test_default_allow_and_open_methods():
    z = authz({"id": "no-shell", "effect": "deny", "tools": ["shell*"]}, default="allow")
    assert allowed(z, ANON, "tools/call", "echo")
    assert not allowed(z, ANON, "tools/call", "shell.exec")
    d = authz()  # default deny
    for m in ("initialize", "ping", "notifications/initialized", "notifications/cancelled", "tools/list",
              "prompts/list", "resources/list", "resources/templates/list", "logging/setLevel"):  # fmt: skip
        dec = d.check(ANON, m, None, None)
        assert (dec.allowed, dec.reason) == (True, "open_method"), m
    assert not allowed(d, ANON, "tools/call", "echo")
    assert not allowed(d, ANON, "resources/read", "file:///x")
    # a rule can still close an open method
    z2 = authz({"effect": "deny", "methods": ["tools/list"], "kinds": ["anonymous"]})
    assert not allowed(z2, ANON, "tools/list", None)
    assert allowed(z2, ALICE, "tools/list", None)
    # and open_methods is configurable
    z3 = authz(open_methods=["initialize"])
    assert not allowed(z3, ANON, "tools/list", None)


def test_require_scopes_is_step_up():
    z = authz({"id": "writers", "effect": "allow", "tools": ["write_*"], "require_scopes": ["mcp:write"]})
    d = z.check(jwt_p("a", scopes=["mcp:read"]), "tools/call", "write_file", None)
    assert (d.allowed, d.reason, d.rule_id, d.missing_scopes) == (
        False,
        "insufficient_scope",
        "writers",
        ("mcp:write",),
    )
    assert allowed(z, jwt_p("b", scopes=["mcp:write"]), "tools/call", "write_file")


def test_memo_returns_the_same_decision_and_is_bounded(monkeypatch):
    import mcpfast.policy.authz as mod

    monkeypatch.setattr(mod, "_MEMO_MAX", 8)
    z = authz({"id": "r", "effect": "allow", "tools": ["a*"]})
    d1 = z.check(ALICE, "tools/call", "abc", "b")
    assert z.check(ALICE, "tools/call", "abc", "b") is d1
    for i in range(50):
        z.check(ALICE, "tools/call", f"a{i}", "b")
    assert len(z._memo) <= 8
    # principals are keyed by identity: an equal-looking principal is a separate entry
    other = jwt_p("alice", groups=["eng", "admins"])
    assert z.check(other, "tools/call", "abc", "b").allowed


def test_method_index_is_bounded(monkeypatch):
    import mcpfast.policy.authz as mod

    monkeypatch.setattr(mod, "_INDEX_MAX", 4)
    z = authz({"effect": "allow"})
    for i in range(100):
        z.evaluate(ANON, f"x/{i}", None, None)
    assert len(z._index) <= 4


# ---------------------------------------------------------------------------------
# List filtering


TOOLS = orjson.dumps(
    {
        "jsonrpc": "2.0",
        "id": 3,
        "result": {
            "tools": [
                {"name": "echo", "inputSchema": {"type": "object"}},
                {"name": "weather.get", "description": "ünïcødé", "inputSchema": {"type": "object"}},
                {"name": "admin_reset", "inputSchema": {"type": "object"}},
                {"description": "no name"},
            ],
            "nextCursor": "abc",
        },
    }
)


def _names(body: bytes, field="tools", key="name"):
    return [t.get(key) for t in orjson.loads(body)["result"][field]]


def test_tools_list_filtered_per_principal():
    z = authz(
        {"id": "admins", "effect": "allow", "claims": {"groups": "admins"}},
        {"id": "sales", "effect": "allow", "subjects": ["bob"], "tools": ["echo", "weather.*"]},
    )
    assert _names(z.filter_list(ALICE, "tools/list", TOOLS, "b1")) == ["echo", "weather.get", "admin_reset"]
    out = z.filter_list(BOB, "tools/list", TOOLS, "b1")
    assert _names(out) == ["echo", "weather.get"]
    assert orjson.loads(out)["result"]["nextCursor"] == "abc" and orjson.loads(out)["id"] == 3
    assert _names(z.filter_list(ANON, "tools/list", TOOLS, "b1")) == []


def test_unchanged_list_is_the_same_object():
    z = authz({"effect": "allow", "tools": ["*"]}, {"effect": "deny", "tools": ["nothing-here"]})
    body = orjson.dumps({"jsonrpc": "2.0", "id": 1, "result": {"tools": [{"name": "a"}, {"name": "b"}]}})
    assert z.filter_list(ALICE, "tools/list", body, None) is body


def test_no_parse_when_nothing_can_be_denied():
    z = authz({"effect": "allow", "tools": ["x"]}, default="allow")
    assert not z.needs_filter("tools/list")
    garbage = b"definitely not json"  # would fail to parse; proves it is not parsed
    assert z.filter_list(ANON, "tools/list", garbage, None) is garbage
    z2 = authz({"effect": "deny", "tools": ["x"]}, default="allow")
    assert z2.needs_filter("tools/list") and not z2.needs_filter("prompts/list")
    assert not z2.needs_filter("tools/call")


def test_prompts_resources_and_templates_filtered():
    z = authz(
        {"effect": "allow", "prompts": ["public_*"]},
        {"effect": "allow", "resources": ["file:///docs/*", "docs://{id}"]},
    )
    prompts = orjson.dumps(
        {"jsonrpc": "2.0", "id": 1, "result": {"prompts": [{"name": "public_a"}, {"name": "secret"}]}}
    )
    assert _names(z.filter_list(ANON, "prompts/list", prompts, None), "prompts") == ["public_a"]
    res = orjson.dumps(
        {"jsonrpc": "2.0", "id": 2, "result": {"resources": [{"uri": "file:///docs/a", "name": "a"},
                                                             {"uri": "file:///etc/shadow", "name": "s"}]}}
    )  # fmt: skip
    assert _names(z.filter_list(ANON, "resources/list", res, None), "resources", "uri") == ["file:///docs/a"]
    tpl = orjson.dumps(
        {"jsonrpc": "2.0", "id": 3, "result": {"resourceTemplates": [{"uriTemplate": "docs://{id}"},
                                                                     {"uriTemplate": "db://{table}"}]}}
    )  # fmt: skip
    assert _names(z.filter_list(ANON, "resources/templates/list", tpl, None), "resourceTemplates", "uriTemplate") == [
        "docs://{id}"
    ]


def test_filter_leaves_errors_other_methods_and_garbage_alone():
    z = authz()
    err = orjson.dumps({"jsonrpc": "2.0", "id": 1, "error": {"code": -32601, "message": "no"}})
    assert z.filter_list(ANON, "tools/list", err, None) is err
    assert z.filter_list(ANON, "tools/call", TOOLS, None) is TOOLS
    assert z.filter_list(ANON, "tools/list", b"{oops", None) == b"{oops"
    odd = orjson.dumps({"jsonrpc": "2.0", "id": 1, "result": {"tools": "not-a-list"}})
    assert z.filter_list(ANON, "tools/list", odd, None) is odd


def test_batch_answers_are_filtered_element_by_element():
    z = authz({"effect": "allow", "tools": ["echo"]})
    batch = orjson.dumps([orjson.loads(TOOLS), {"jsonrpc": "2.0", "id": 9, "result": {}}])
    out = orjson.loads(z.filter_list(ANON, "tools/list", batch, None))
    assert [t["name"] for t in out[0]["result"]["tools"]] == ["echo"] and out[1] == {
        "jsonrpc": "2.0",
        "id": 9,
        "result": {},
    }


# ---------------------------------------------------------------------------------
# Config errors name the key


@pytest.mark.parametrize(
    "rule,key",
    [
        ({"effect": "maybe"}, "authz.rules[0].effect"),
        ({}, "authz.rules[0].effect"),
        ({"effect": "allow", "client_ips": ["10.0.0.300"]}, "authz.rules[0].client_ips[0]"),
        ({"effect": "allow", "kinds": ["root"]}, "authz.rules[0].kinds[0]"),
        ({"effect": "allow", "names": ["x"]}, "authz.rules[0].names"),
        ({"effect": "deny", "require_scopes": ["a"]}, "authz.rules[0].require_scopes"),
        ({"effect": "allow", "claims": {"groups": []}}, "authz.rules[0].claims.groups"),
        ({"effect": "allow", "tools": "echo", "colour": "red"}, "authz.rules[0].colour"),
        ({"effect": "allow", "id": "has space"}, "authz.rules[0].id"),
    ],
)
def test_rule_config_errors(rule, key):
    with pytest.raises(ConfigError) as ei:
        build_policy_config({"authz": {"rules": [rule]}})
    assert ei.value.key == key


def test_duplicate_rule_ids_and_bad_default():
    with pytest.raises(ConfigError) as ei:
        build_policy_config({"authz": {"rules": [{"id": "a", "effect": "allow"}, {"id": "a", "effect": "deny"}]}})
    assert ei.value.key == "authz.rules[1].id"
    with pytest.raises(ConfigError) as ei:
        build_policy_config({"authz": {"default": "maybe"}})
    assert ei.value.key == "authz.default"


def test_fifty_rules_evaluate_in_order():
    rules = [{"id": f"r{i}", "effect": "deny", "subjects": [f"user{i}"], "tools": [f"tool{i}_*"]} for i in range(49)]
    rules.append({"id": "last", "effect": "allow", "claims": {"groups": "eng"}})
    z = authz(*rules)
    assert z.check(ALICE, "tools/call", "tool3_x", None).rule_id == "last"
    assert z.check(jwt_p("user3", groups=["eng"]), "tools/call", "tool3_x", None).rule_id == "r3"
    assert z.check(jwt_p("user3", groups=["eng"]), "tools/call", "tool4_x", None).rule_id == "last"


def test_allowed_names_by_backend_and_own_name():
    a = authz({"effect": "allow", "subjects": ["bob"], "tools": ["whoami"], "backends": ["beta"]})
    bob = jwt_p("bob")
    assert a.allowed_names(bob, "tools/list", ["whoami", "steps"], "beta") == [True, False]
    assert a.allowed_names(bob, "tools/list", ["whoami"], "alpha") == [False]
    assert a.allowed_names(jwt_p("carol"), "tools/list", [], "beta") is None  # nothing to drop
    allow_all = authz(default="allow")
    assert allow_all.allowed_names(bob, "tools/list", ["x", "y"], "alpha") is None
