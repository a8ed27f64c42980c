"""Authorization: ordered rules over (principal, operation) → allow or deny.

Theory of operation.  Rules come from ``[[authz.rules]]`` in order; the first rule
whose every condition holds decides, else the default does (``open_methods`` -- the
session lifecycle, ``ping``, notifications and the list methods -- are allowed when no
rule matches, whatever the default, because their answers are filtered instead).

A rule has principal conditions (subject globs, kinds, claim values, scopes, API-key
attributes, client CIDRs) and operation conditions (JSON-RPC method globs, with the
tool / prompt name or resource URI globs that go with each, and backend globs).
Everything is compiled at load: globs into one regex per list (plus a set for exact
names), CIDRs into network objects, and for each method seen the short list of rules
that can apply to it (a rule about ``tools/call`` is never looked at for
``prompts/get``).

``check`` memoizes decisions per (principal object, method, name, backend) in a bounded
dict: principals are cached per token by the authenticator, so a repeated call is one
tuple hash and one lookup, however many rules there are.  The memo is wholesale
cleared when full (cheaper than LRU bookkeeping, and refilled at the rate of requests).

``filter_list`` applies the same decisions to list answers: each tool in a
``tools/list`` answer is kept if ``tools/call`` of it would be allowed (prompts:
``prompts/get``; resources: ``resources/read`` of the URI; templates: the
``uriTemplate`` string).  Only these answers are parsed (orjson), and re-encoded only
when an item was removed; when no rule can deny that kind of call, not even parsed.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import orjson

from .config import AuthzConfig, RuleConfig
from .principal import Principal

__all__ = ["Authorizer", "Decision", "compile_globs", "LIST_METHODS", "NAME_METHODS"]

Matcher = Callable[[str], bool]

# list method → (result field, item key, the call the item stands for)
LIST_METHODS: dict[str, tuple[str, str, str]] = {
    "tools/list": ("tools", "name", "tools/call"),
    "prompts/list": ("prompts", "name", "prompts/get"),
    "resources/list": ("resources", "uri", "resources/read"),
    "resources/templates/list": ("resourceTemplates", "uriTemplate", "resources/read"),
}
# Methods whose target is params.name (the rest that have one use params.uri).
NAME_METHODS = frozenset(("tools/call", "prompts/get"))
_RESOURCE_METHODS = ("resources/read", "resources/subscribe", "resources/unsubscribe")
_MEMO_MAX = 65536
_MEMO_NAME_MAX = 512  # longest name or URI a memo key may hold: the memo stays small
_INDEX_MAX = 1024


class Decision:
    """The outcome of one check.  Instances are built at load and shared."""

    __slots__ = ("allowed", "rule_id", "reason", "missing_scopes")

    def __init__(self, allowed: bool, rule_id: str | None, reason: str, missing_scopes: tuple[str, ...] = ()):
        self.allowed = allowed
        self.rule_id = rule_id  # None: the default (or an open method) decided
        self.reason = reason  # "rule" | "default" | "open_method" | "insufficient_scope"
        self.missing_scopes = missing_scopes  # allow rule matched but these scopes are required

    def __repr__(self) -> str:
        return f"Decision({self.allowed}, {self.rule_id!r}, {self.reason!r})"


def _always(_: str) -> bool:
    return True


def compile_globs(patterns: Iterable[str]) -> Matcher:
    """Shell-style globs (``*``, ``?``, ``[...]``; ``*`` crosses ``.`` and ``/``), case
    sensitive, as one callable: a set lookup for plain names, one regex for the rest."""
    pats = list(patterns)
    exact = frozenset(p for p in pats if not any(c in p for c in "*?["))
    wild = [p for p in pats if p not in exact]
    if "*" in wild:
        return _always
    if not wild:
        return exact.__contains__
    rx = re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in wild))
    match = rx.match
    if not exact:
        return lambda s: match(s) is not None
    return lambda s: s in exact or match(s) is not None


def _either(a: Matcher | None, b: Matcher | None) -> Matcher | None:
    """Union of two name conditions (None means any name)."""
    if a is None or b is None:
        return None
    return lambda s: a(s) or b(s)


def _as_strings(v: Any) -> tuple[str, ...]:
    if isinstance(v, (list, tuple)):  # JSON arrays (claims) or tuples (API-key attributes)
        return tuple(_scalar(x) for x in v if isinstance(x, (str, int, float, bool)))
    if isinstance(v, str):
        return (v,)
    if isinstance(v, (int, float, bool)):
        return (_scalar(v),)
    return ()


def _scalar(x: Any) -> str:
    if isinstance(x, bool):
        return "true" if x else "false"
    return str(x)


def _claim(claims: Mapping[str, Any], path: str) -> Any:
    """A claim by name, or by dotted path into nested objects (``realm_access.roles``).
    The exact name wins: claim names may themselves contain dots (URIs)."""
    if path in claims:
        return claims[path]
    node: Any = claims
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _parse_ip(s: str):
    try:
        ip = ipaddress.ip_address(s.partition("%")[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


class _Rule:
    __slots__ = (
        "id", "allow", "any_op", "ops", "method_globs", "backends", "kinds", "subjects", "scopes", "claims",
        "attributes", "nets", "require", "decision", "scope_decision",
    )  # fmt: skip

    def __init__(self, rc: RuleConfig) -> None:
        self.id = rc.id
        self.allow = rc.effect == "allow"
        ops: dict[str, Matcher | None] = {}
        globs: list[tuple[Matcher, Matcher | None]] = []

        def add(method: str, names: Matcher | None) -> None:
            if any(c in method for c in "*?["):
                globs.append((compile_globs([method]), names))
            elif method in ops:
                ops[method] = _either(ops[method], names)
            else:
                ops[method] = names

        if rc.methods is not None:
            nm = compile_globs(rc.names) if rc.names is not None else None
            for m in rc.methods:
                add(m, nm)
        if rc.tools is not None:
            add("tools/call", compile_globs(rc.tools))
        if rc.prompts is not None:
            add("prompts/get", compile_globs(rc.prompts))
        if rc.resources is not None:
            nm = compile_globs(rc.resources)
            for m in _RESOURCE_METHODS:
                add(m, nm)
        self.any_op = rc.methods is None and rc.tools is None and rc.prompts is None and rc.resources is None
        self.ops = ops
        self.method_globs = tuple(globs)
        self.backends = compile_globs(rc.backends) if rc.backends is not None else None
        self.kinds = frozenset(rc.kinds) if rc.kinds is not None else None
        self.subjects = compile_globs(rc.subjects) if rc.subjects is not None else None
        self.scopes = frozenset(rc.scopes)
        self.claims = tuple((path, frozenset(vals)) for path, vals in rc.claims)
        self.attributes = tuple((name, frozenset(vals)) for name, vals in rc.attributes)
        self.nets = rc.client_ips
        self.require = frozenset(rc.require_scopes)
        self.decision = Decision(self.allow, rc.id, "rule")
        self.scope_decision = Decision(False, rc.id, "insufficient_scope", tuple(sorted(self.require)))

    def applies_to(self, method: str) -> tuple[bool, Matcher | None]:
        """(applies, name condition) for requests with this method."""
        if self.any_op:
            return True, None
        if method in self.ops:
            return True, self.ops[method]
        for mm, nm in self.method_globs:
            if mm(method):
                return True, nm
        return False, None

    def principal_matches(self, p: Principal) -> bool:
        if self.kinds is not None and p.kind not in self.kinds:
            return False
        if self.subjects is not None and not self.subjects(p.subject):
            return False
        if self.scopes and not self.scopes <= p.scopes:
            return False
        for path, vals in self.claims:
            if vals.isdisjoint(_as_strings(_claim(p.claims, path))):
                return False
        for name, vals in self.attributes:
            if vals.isdisjoint(_as_strings(p.attributes.get(name))):
                return False
        if self.nets is not None:
            ip = _parse_ip(p.client_ip)
            if ip is None or not any(ip.version == n.version and ip in n for n in self.nets):
                return False
        return True


class Authorizer:
    """All rules of one configuration, compiled."""

    __slots__ = ("rules", "default", "hide_denied", "deny_status", "_open", "_index", "_memo", "_needs",
                 "_default_allow", "_default_deny", "_open_allow")  # fmt: skip

    def __init__(self, cfg: AuthzConfig) -> None:
        self.rules = tuple(_Rule(rc) for rc in cfg.rules)
        self.default = cfg.default
        self.hide_denied = cfg.hide_denied
        self.deny_status = cfg.deny_status
        self._open = compile_globs(cfg.open_methods) if cfg.open_methods else (lambda _m: False)
        self._index: dict[str, tuple[tuple[_Rule, Matcher | None], ...]] = {}
        self._memo: dict[tuple, Decision] = {}
        self._needs: dict[str, bool] = {}
        self._default_allow = Decision(True, None, "default")
        self._default_deny = Decision(False, None, "default")
        self._open_allow = Decision(True, None, "open_method")

    # --- decisions --------------------------------------------------------------------
    def check(self, principal: Principal, method: str, name: str | None, backend: str | None) -> Decision:
        key = (principal, method, name, backend)
        d = self._memo.get(key)
        if d is None:
            d = self.evaluate(principal, method, name, backend)
            if name is not None and len(name) > _MEMO_NAME_MAX:
                return d  # a long URI is decided each time, never kept
            memo = self._memo
            if len(memo) >= _MEMO_MAX:
                memo.clear()
            memo[key] = d
        return d

    def evaluate(self, principal: Principal, method: str, name: str | None, backend: str | None) -> Decision:
        """The decision without the memo (first match wins)."""
        for rule, names in self._rules_for(method):
            if names is not None and (name is None or not names(name)):
                continue
            if rule.backends is not None and (backend is None or not rule.backends(backend)):
                continue
            if not rule.principal_matches(principal):
                continue
            if rule.require and not rule.require <= principal.scopes:
                return rule.scope_decision
            return rule.decision
        return self._fallback(method)

    def _fallback(self, method: str) -> Decision:
        if self._open(method):
            return self._open_allow
        return self._default_allow if self.default == "allow" else self._default_deny

    def _rules_for(self, method: str) -> tuple[tuple[_Rule, Matcher | None], ...]:
        rs = self._index.get(method)
        if rs is None:
            out = []
            for rule in self.rules:
                ok, names = rule.applies_to(method)
                if ok:
                    out.append((rule, names))
            rs = tuple(out)
            if len(self._index) < _INDEX_MAX:  # methods come from clients: bound the index
                self._index[method] = rs
        return rs

    def may_deny(self, method: str) -> bool:
        """Can any principal be denied ``method`` on some name?  False lets list
        filtering skip parsing altogether."""
        v = self._needs.get(method)
        if v is None:
            v = not self._fallback(method).allowed or any(
                not rule.allow or rule.require for rule, _ in self._rules_for(method)
            )
            if len(self._needs) < _INDEX_MAX:
                self._needs[method] = v
        return v

    # --- list answers -----------------------------------------------------------------
    def needs_filter(self, method: str) -> bool:
        spec = LIST_METHODS.get(method)
        return spec is not None and self.may_deny(spec[2])

    def filter_list(self, principal: Principal, method: str, body: bytes, backend: str | None) -> bytes:
        """The JSON-RPC answer to a list ``method`` with the items ``principal`` may not
        use removed.  Returns ``body`` itself when nothing was removed (or it is not a
        list answer); items without a string name are removed (fail closed)."""
        spec = LIST_METHODS.get(method)
        if spec is None or not self.may_deny(spec[2]):
            return body
        try:
            msg = orjson.loads(body)
        except orjson.JSONDecodeError:
            return body  # not JSON: nothing a client could read a tool from
        changed = False
        if isinstance(msg, list):  # a batch answer (2025-03-26)
            for m in msg:
                changed = self._filter_one(principal, spec, m, backend) or changed
        else:
            changed = self._filter_one(principal, spec, msg, backend)
        return orjson.dumps(msg) if changed else body

    def allowed_names(
        self, principal: Principal, method: str, names: Sequence[str], backend: str | None
    ) -> list[bool] | None:
        """For the items of one list ``method`` known by their names (``params.name`` or
        URI as the backend has them): which may ``principal`` use on ``backend``?  None
        when all may -- the caller keeps the page as it is."""
        spec = LIST_METHODS.get(method)
        if spec is None or not self.may_deny(spec[2]):
            return None
        use = spec[2]
        check = self.check
        mask = [check(principal, use, n, backend).allowed for n in names]
        return None if all(mask) else mask

    def _filter_one(self, principal: Principal, spec: tuple[str, str, str], msg: Any, backend: str | None) -> bool:
        if not isinstance(msg, dict):
            return False
        result = msg.get("result")
        if not isinstance(result, dict):
            return False
        field, key, use = spec
        items = result.get(field)
        if not isinstance(items, list):
            return False
        check = self.check
        keep = [
            it
            for it in items
            if isinstance(it, dict) and isinstance(it.get(key), str) and check(principal, use, it[key], backend).allowed
        ]
        if len(keep) == len(items):
            return False
        result[field] = keep
        return True
