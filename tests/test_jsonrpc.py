"""JSON-RPC envelope scanner and splice helpers (``_core.pyi``, JSON-RPC section) over
both cores.

Hand-written cases, one rule at a time: every kind and every reported field, key order,
nesting traps (interesting keys nested where they must not count, inside strings,
behind escapes), escaped keys, whitespace, batches, ids, duplicate keys, the -32700
faults (grammar, truncation, UTF-8, control characters, surrogates, numbers, depth) and
the -32600 ones, input buffer types, and ``splice`` / ``splice_many``.  Every span is
also checked to slice out JSON that ``orjson`` reads as the reported value.  The volume
(random bodies, mutants, prefixes, orjson as oracle) is in ``test_jsonrpc_differential``.
"""

from __future__ import annotations

import array
import ctypes
import itertools
import json
import mmap
import random
import sys

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mcpfast.wire.errors import INVALID_REQUEST, PARSE_ERROR, ProtocolError

PV = "io.modelcontextprotocol/protocolVersion"
SPAN_FIELDS = (
    "id", "params", "name", "uri", "cursor", "progress_token", "request_id", "protocol_version", "result", "error",
)  # fmt: skip


def scan(core, body):
    return core.scan_jsonrpc(body)


def parse_error(core, body) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        core.scan_jsonrpc(body)
    assert (info.value.status, info.value.code) == (400, PARSE_ERROR), info.value
    return info.value


def invalid(core, body) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        core.scan_jsonrpc(body)
    assert (info.value.status, info.value.code) == (400, INVALID_REQUEST), info.value
    return info.value


def text(body: bytes, span) -> bytes:
    return body[span[0] : span[1]]


def value_at(body: bytes, span):
    """The JSON value a span holds (stdlib json: exact integers of any size)."""
    return json.loads(text(body, span))


def check_spans(body: bytes, env) -> None:
    """Every reported span lies in the message and slices out one whole JSON value; the
    decoded fields equal what the span holds."""
    assert 0 <= env.start < env.end <= len(body)
    assert body[env.start] == ord("{") and body[env.end - 1] == ord("}")
    for field in SPAN_FIELDS:
        span = getattr(env, field + "_span")
        if span is None:
            continue
        assert env.start < span[0] < span[1] < env.end
        value = value_at(body, span)  # raises if not exactly one JSON value
        if field in ("id", "name", "uri", "cursor", "progress_token", "request_id", "protocol_version"):
            assert getattr(env, field) == value and type(getattr(env, field)) is type(value)


def one(core, body, **expected):
    """Scan a single message, check its spans, and compare the named fields."""
    env = scan(core, body)
    assert not isinstance(env, list)
    check_spans(body, env)
    for key, want in expected.items():
        got = getattr(env, key)
        if key.endswith("_span") and want is not None and not isinstance(want, tuple):
            got = text(body, got)  # compare the sliced bytes
        assert got == want, (key, got, want)
        if key in ("id", "progress_token", "request_id", "error_code") and want is not None:
            assert type(got) is type(want)
    return env


# -- constants and kinds ---------------------------------------------------------------


def test_kind_constants(core):
    assert (core.KIND_REQUEST, core.KIND_NOTIFICATION, core.KIND_RESPONSE, core.KIND_ERROR) == (1, 2, 3, 4)


def test_request_all_fields(core):
    body = (
        b'{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"search","uri":"file:///a",'
        b'"cursor":"c1","requestId":3,"_meta":{"progressToken":"tok","' + PV.encode() + b'":"2025-06-18"},'
        b'"arguments":{"q":1}}}'
    )
    env = one(
        core, body, kind=core.KIND_REQUEST, method="tools/call", id=7, name="search", uri="file:///a", cursor="c1",
        request_id=3, progress_token="tok", protocol_version="2025-06-18", result_span=None, error_span=None,
        error_code=None, id_span=b"7", name_span=b'"search"', uri_span=b'"file:///a"', cursor_span=b'"c1"',
        request_id_span=b"3", progress_token_span=b'"tok"', protocol_version_span=b'"2025-06-18"',
    )  # fmt: skip
    assert (env.start, env.end) == (0, len(body))
    assert value_at(body, env.params_span) == orjson.loads(body)["params"]


def test_notification(core):
    body = b'{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":"r-9","reason":"x"}}'
    one(core, body, kind=core.KIND_NOTIFICATION, method="notifications/cancelled", id=None, id_span=None, request_id="r-9")


def test_notification_without_params(core):
    one(core, b'{"jsonrpc":"2.0","method":"notifications/initialized"}', kind=2, params_span=None, name=None)


def test_response(core):
    body = b'{"jsonrpc":"2.0","id":"abc","result":{"content":[{"type":"text","text":"hi"}]}}'
    one(core, body, kind=core.KIND_RESPONSE, method=None, id="abc", id_span=b'"abc"', result_span=b'{"content":[{"type":"text","text":"hi"}]}', error_span=None)


@pytest.mark.parametrize("result", [b"null", b"0", b'""', b"[]", b"{}", b"false", b"1.5e3"])
def test_response_any_result(core, result):
    body = b'{"jsonrpc":"2.0","id":1,"result":' + result + b"}"
    one(core, body, kind=3, result_span=result)


def test_error_response(core):
    body = b'{"jsonrpc":"2.0","id":5,"error":{"code":-32601,"message":"Method not found","data":{"code":1}}}'
    one(core, body, kind=core.KIND_ERROR, id=5, error_code=-32601, error_span=body[32:-1], result_span=None)


def test_error_with_null_id(core):
    one(core, b'{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"Parse error"}}', kind=4, id=None, id_span=b"null", error_code=-32700)


@pytest.mark.parametrize(
    "error, code",
    [
        (b'{"code":1.0}', None), (b'{"code":"1"}', None), (b'{"code":null}', None), (b'{"code":true}', None),
        (b'{"message":"x"}', None), (b'"boom"', None), (b"[1]", None), (b"null", None), (b'{"code":-0}', 0),
        (b'{"code":123456789012345678901234567890}', 123456789012345678901234567890), (b'{"c\\u006fde":2}', 2),
        (b'{"data":{"code":3}}', None),
    ],
)  # fmt: skip
def test_error_code(core, error, code):
    """error.code is reported when error is an object and code an integer; any error value
    still makes an error response (its span is reported)."""
    body = b'{"jsonrpc":"2.0","id":1,"error":' + error + b"}"
    one(core, body, kind=4, error_code=code, error_span=error)


# -- params and the fields inside ------------------------------------------------------


@pytest.mark.parametrize("params", [b"[1,2]", b"[]", b"{}"])
def test_params_structured(core, params):
    one(core, b'{"jsonrpc":"2.0","id":1,"method":"m","params":' + params + b"}", params_span=params, name=None)


@pytest.mark.parametrize("params", [b"null", b"1", b'"name"', b"true"])
def test_params_not_structured_is_absent(core, params):
    """JSON-RPC §4.2: params is structured; anything else is reported as no params."""
    one(core, b'{"jsonrpc":"2.0","id":1,"method":"m","params":' + params + b"}", kind=1, params_span=None)


@pytest.mark.parametrize("bad", [b"1", b"1.5", b"null", b"true", b"{}", b'["x"]'])
def test_wrong_typed_fields_are_absent(core, bad):
    """name/uri/cursor want strings; progressToken/requestId strings or integers;
    a wrong type is reported as absent, not as an error."""
    for key, field in (("name", "name"), ("uri", "uri"), ("cursor", "cursor")):
        body = b'{"jsonrpc":"2.0","id":1,"method":"m","params":{"' + key.encode() + b'":' + bad + b"}}"
        one(core, body, **{field: None, field + "_span": None})
    if bad not in (b"1",):
        body = b'{"jsonrpc":"2.0","method":"m","params":{"requestId":' + bad + b',"_meta":{"progressToken":' + bad + b',"' + PV.encode() + b'":' + bad + b"}}}"
        one(core, body, request_id=None, request_id_span=None, progress_token=None, progress_token_span=None, protocol_version=None, protocol_version_span=None)


def test_integer_tokens(core):
    body = b'{"jsonrpc":"2.0","method":"m","params":{"requestId":-12,"_meta":{"progressToken":18446744073709551616}}}'
    one(core, body, request_id=-12, progress_token=18446744073709551616, progress_token_span=b"18446744073709551616")


def test_meta_not_an_object(core):
    body = b'{"jsonrpc":"2.0","method":"m","params":{"_meta":[{"progressToken":1}],"name":"n"}}'
    one(core, body, progress_token=None, name="n")


# -- key order and traps ---------------------------------------------------------------

MEMBERS = [
    b'"jsonrpc":"2.0"', b'"id":"i-1"', b'"method":"tools/call"',
    b'"params":{"name":"t","_meta":{"progressToken":9}}', b'"extra":{"method":"no","id":0,"params":{"name":"no"}}',
]  # fmt: skip


def test_every_key_order(core):
    for order in itertools.permutations(MEMBERS):
        body = b"{" + b",".join(order) + b"}"
        one(core, body, kind=1, method="tools/call", id="i-1", name="t", progress_token=9)


def test_every_params_order(core):
    members = [b'"name":"n"', b'"uri":"u"', b'"cursor":"c"', b'"requestId":4', b'"_meta":{"progressToken":"p","x":[1]}', b'"arguments":{"name":"no"}']
    for order in itertools.permutations(members):
        body = b'{"jsonrpc":"2.0","id":1,"method":"m","params":{' + b",".join(order) + b"}}"
        one(core, body, name="n", uri="u", cursor="c", request_id=4, progress_token="p")


@pytest.mark.parametrize(
    "body",
    [
        # interesting keys nested where they do not count
        b'{"jsonrpc":"2.0","id":1,"result":{"method":"x","id":2,"params":{"name":"n"},"error":{"code":1}}}',
        b'{"result":{"jsonrpc":"1.0","id":"no"},"jsonrpc":"2.0","id":1}',
        b'{"jsonrpc":"2.0","id":1,"result":[{"method":"x"},["method","id"]]}',
        b'{"jsonrpc":"2.0","id":1,"result":"\\"method\\":\\"x\\",\\"id\\":2"}',
        b'{"jsonrpc":"2.0","id":1,"result":{"k":"{\\"error\\":{}}"}}',
        b'{"x":{"result":1,"error":2,"method":"m"},"jsonrpc":"2.0","id":1,"result":null}',
        b'{"jsonrpc":"2.0","id":1,"result":{},"code":5,"_meta":{"progressToken":1},"name":"top"}',
    ],
)  # fmt: skip
def test_nested_traps_response(core, body):
    one(core, body, kind=3, id=1, method=None, name=None, progress_token=None, error_code=None, error_span=None)


@pytest.mark.parametrize(
    "params",
    [
        b'{"arguments":{"name":"no","uri":"no","cursor":"no","_meta":{"progressToken":1},"requestId":1}}',
        b'{"params":{"name":"no"},"method":"no","id":3}',
        b'{"progressToken":1,"protocolVersion":"x","' + PV.encode() + b'":"x"}',
        b'{"_meta":{"name":"no","uri":"no","_meta":{"progressToken":1},"requestId":1}}',
        b'{"x":"\\"name\\":\\"no\\"","y":["name","uri"]}',
        b'{"Name":"no","URI":"no","name ":"no"," name":"no","nam":"no","names":"no"}',
    ],
)  # fmt: skip
def test_nested_traps_params(core, params):
    body = b'{"jsonrpc":"2.0","method":"tools/call","id":2,"params":' + params + b"}"
    one(core, body, kind=1, method="tools/call", id=2, name=None, uri=None, cursor=None, request_id=None, progress_token=None, protocol_version=None)


def test_method_inside_string_before_real_method(core):
    body = b'{"params":{"q":"\\",\\"method\\":\\"evil\\"}"},"method":"good","jsonrpc":"2.0"}'
    one(core, body, kind=2, method="good")


# -- escapes ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, value",
    [
        (b'"tools\\/call"', "tools/call"), (b'"a\\"b"', 'a"b'), (b'"a\\\\b"', "a\\b"), (b'"\\b\\f\\n\\r\\t"', "\b\f\n\r\t"),
        (b'"\\u0041\\u00e9\\u4e2D"', "A\u00e9\u4e2d"), (b'"\\ud83d\\ude00"', "\U0001f600"), (b'"\\uD83D\\uDE00x"', "\U0001f600x"),
        (b'"\\u0000"', "\x00"), (b'"\xc3\xa9\xe4\xb8\xad\xf0\x9f\x98\x80"', "\u00e9\u4e2d\U0001f600"), (b'"\x7f"', "\x7f"),
        (b'"\\udbff\\udfff"', "\U0010ffff"), (b'""', ""), (b'"\\u2028\xe2\x80\xa9"', "\u2028\u2029"),
    ],
)  # fmt: skip
def test_string_values_decoded(core, raw, value):
    body = b'{"jsonrpc":"2.0","id":' + raw + b',"method":' + raw + b',"params":{"name":' + raw + b',"_meta":{"progressToken":' + raw + b"}}}"
    one(core, body, id=value, method=value, name=value, progress_token=value, id_span=raw, name_span=raw)


@pytest.mark.parametrize(
    "key",
    [b'"\\u006dethod"', b'"m\\u0065thod"', b'"\\u006D\\u0065\\u0074\\u0068\\u006F\\u0064"', b'"meth\\u006fd"'],
)
def test_escaped_keys_match(core, key):
    """Keys are compared by their unescaped value (RFC 8259 §7: an escape denotes its
    character), as orjson reads them."""
    body = b'{"js\\u006fnrpc":"2.0",' + key + b':"m","\\u0069d":1,"p\\u0061rams":{"n\\u0061me":"n","\\u005fmeta":{"progress\\u0054oken":2}}}'
    assert orjson.loads(body)["method"] == "m"
    one(core, body, kind=1, method="m", id=1, name="n", progress_token=2)


def test_escaped_longest_key(core):
    """The longest key we know, every character escaped (234 bytes), still matches, and
    so does one with an escaped slash."""
    every = "".join(f"\\u{ord(ch):04x}" for ch in PV).encode()
    for key in (every, b"io.modelcontextprotocol\\/protocolVersion"):
        body = b'{"jsonrpc":"2.0","id":1,"method":"m","params":{"_meta":{"' + key + b'":"2025-06-18"}}}'
        one(core, body, protocol_version="2025-06-18")


def test_escaped_near_miss_keys(core):
    body = b'{"jsonrpc":"2.0","id":1,"method":"m","params":{"name\\u0000":"x","\\u006eame ":"y","nam\\u00e9":"z"}}'
    one(core, body, name=None)


@pytest.mark.parametrize("version", [b'"\\u0032.0"', b'"2\\u002e0"', b'"\\u0032\\u002e\\u0030"'])
def test_escaped_version(core, version):
    one(core, b'{"jsonrpc":' + version + b',"id":1,"result":1}', kind=3)


# -- whitespace --------------------------------------------------------------------------


def test_whitespace_everywhere(core):
    ws = b" \t\r\n"
    tokens = [b"{", b'"jsonrpc"', b":", b'"2.0"', b",", b'"id"', b":", b"1", b",", b'"method"', b":", b'"m"', b",",
              b'"params"', b":", b"{", b'"name"', b":", b'"n"', b",", b'"a"', b":", b"[", b"1", b",", b"{", b"}", b"]", b"}", b"}"]  # fmt: skip
    body = ws + ws.join(tokens) + ws
    env = one(core, body, kind=1, id=1, method="m", name="n", id_span=b"1", name_span=b'"n"')
    assert (env.start, env.end) == (4, len(body) - 4)
    assert text(body, env.params_span).startswith(b"{") and text(body, env.params_span).endswith(b"}")


@pytest.mark.parametrize("junk", [b"\x0c", b"\x0b", b"\xc2\xa0", b"\xef\xbb\xbf", b"\x00", b"\xe2\x80\x8b"])
def test_not_whitespace(core, junk):
    """Only space, tab, LF and CR are JSON whitespace (no BOM, no form feed, no NBSP)."""
    good = b'{"jsonrpc":"2.0","id":1,"result":[1,2]}'
    parse_error(core, junk + good)
    parse_error(core, good + junk)
    parse_error(core, good.replace(b",", b"," + junk, 1))
    parse_error(core, good.replace(b"[1,", b"[1," + junk))


# -- ids ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, value",
    [
        (b"0", 0), (b"-0", 0), (b"42", 42), (b"-42", -42), (b"9223372036854775807", 2**63 - 1),
        (b"-9223372036854775808", -(2**63)), (b"18446744073709551616", 2**64), (b"-" + b"9" * 40, -(10**40 - 1)),
        (b"1" + b"0" * 308, 10**308), (b'"x"', "x"), (b'""', ""), (b'"12"', "12"), (b"null", None),
    ],
)  # fmt: skip
def test_ids(core, raw, value):
    for tail in (b'"method":"m"', b'"result":1', b'"error":{"code":1}'):
        body = b'{"jsonrpc":"2.0","id":' + raw + b"," + tail + b"}"
        env = one(core, body, id=value, id_span=raw)
        assert type(env.id) is type(value)


@pytest.mark.parametrize("raw", [b"1.0", b"1e2", b"-0.0", b"true", b"false", b"[1]", b"{}", b'{"id":1}'])
def test_bad_ids(core, raw):
    err = invalid(core, b'{"jsonrpc":"2.0","id":' + raw + b',"method":"m"}')
    assert "id" in str(err)


# -- the JSON-RPC rules (-32600) ---------------------------------------------------------


@pytest.mark.parametrize(
    "body, why",
    [
        (b'{"id":1,"method":"m"}', "jsonrpc"), (b'{"jsonrpc":"1.0","id":1,"method":"m"}', "jsonrpc"),
        (b'{"jsonrpc":2.0,"id":1,"method":"m"}', "jsonrpc"), (b'{"jsonrpc":"2.0 ","id":1,"method":"m"}', "jsonrpc"),
        (b'{"jsonrpc":"2.00","id":1,"method":"m"}', "jsonrpc"), (b'{"jsonrpc":null,"id":1,"method":"m"}', "jsonrpc"),
        (b'{"jsonrpc":"2.0","id":1,"method":1}', "method"), (b'{"jsonrpc":"2.0","method":null}', "method"),
        (b'{"jsonrpc":"2.0","method":["m"]}', "method"),
        (b'{"jsonrpc":"2.0","id":1}', "no"), (b'{"jsonrpc":"2.0"}', "no"), (b'{"jsonrpc":"2.0","params":{}}', "no"),
        (b'{"jsonrpc":"2.0","id":1,"result":1,"error":{}}', "both"),
        (b'{"jsonrpc":"2.0","id":1,"method":"m","result":1}', "request"),
        (b'{"jsonrpc":"2.0","method":"m","error":{"code":1}}', "request"),
        (b'{"jsonrpc":"2.0","result":1}', "id"), (b'{"jsonrpc":"2.0","error":{"code":1}}', "id"),
        (b"1", "not an object"), (b'"x"', "not an object"), (b"null", "not an object"), (b"true", "not an object"),
        (b"[]", "empty"), (b" [ ] ", "empty"), (b"[1]", "not an object"), (b"[[]]", "not an object"),
        (b'[{"jsonrpc":"2.0","method":"m"},null]', "element 1"), (b'[[{"jsonrpc":"2.0","method":"m"}]]', "element 0"),
        (b'[{"jsonrpc":"2.0","method":"m"},{"jsonrpc":"2.0","id":1}]', "element 1"),
    ],
)  # fmt: skip
def test_invalid_requests(core, body, why):
    err = invalid(core, body)
    assert why in str(err), err


def test_invalid_reports_first_bad_element(core):
    good = b'{"jsonrpc":"2.0","method":"m"}'
    err = invalid(core, b"[" + good + b',{"jsonrpc":"1.0","method":"m"},7,' + good + b"]")
    assert "element 1" in str(err) and "jsonrpc" in str(err)
    err = invalid(core, b"[" + good + b',7,{"jsonrpc":"1.0","method":"m"}]')
    assert "element 1" in str(err) and "not an object" in str(err)


def test_parse_error_wins_over_invalid(core):
    """A broken text is -32700 wherever the damage is, even after an invalid message."""
    parse_error(core, b'[{"jsonrpc":"1.0"},{"jsonrpc":"2.0","method":"m"},{]')
    parse_error(core, b'[7,{"jsonrpc":"2.0","method":"m"}')
    parse_error(core, b'{"jsonrpc":"1.0","id":1,"result":[1,]}')
    parse_error(core, b'{"jsonrpc":"2.0","id":1.0,"method":"m"} x')


# -- duplicate keys: refused where the gateway acts on them --------------------------------
# Parsers disagree on a member named twice (orjson and JavaScript take the last, others the
# first), so a body naming a member the gateway acts on twice -- at the top, in params, in
# _meta or in error -- is refused as it stands: the message policy judged must be the one
# every backend reads.  Members it does not act on may repeat (they reach the backend as
# sent, and nothing of the gateway depends on them).


@pytest.mark.parametrize(
    "body, key",
    [
        (b'{"jsonrpc":"2.0","id":1,"id":"x","method":"m"}', b"id"),
        (b'{"jsonrpc":"2.0","method":"a","method":"b"}', b"method"),
        (b'{"jsonrpc":"1.0","jsonrpc":"2.0","method":"m"}', b"jsonrpc"),
        (b'{"jsonrpc":"2.0","id":1,"result":1,"error":{},"result":2}', b"result"),
        (b'{"jsonrpc":"2.0","method":"m","params":{"name":"a"},"params":{"name":"b"}}', b"params"),
        (b'{"jsonrpc":"2.0","method":"m","params":{"name":"a"},"params":null}', b"params"),
        (b'{"jsonrpc":"2.0","method":"tools/call","params":{"name":"secret","name":"echo"}}', b"name"),
        (b'{"jsonrpc":"2.0","method":"tools/call","params":{"n\\u0061me":"secret","name":"echo"}}', b"name"),
        (b'{"jsonrpc":"2.0","method":"m","params":{"uri":"a","uri":"b"}}', b"uri"),
        (b'{"jsonrpc":"2.0","method":"m","params":{"_meta":{"progressToken":1},"_meta":{}}}', b"_meta"),
        (b'{"jsonrpc":"2.0","method":"m","params":{"_meta":{"progressToken":1,"progressToken":2}}}', b"progressToken"),
        (b'{"jsonrpc":"2.0","id":1,"error":{"code":1,"code":2}}', b"code"),
        (b'[{"jsonrpc":"2.0","method":"a"},{"jsonrpc":"2.0","method":"b","method":"c"}]', b"method"),
    ],
)  # fmt: skip
def test_duplicate_members_acted_on_are_refused(core, body, key):
    at = body.rindex(b'"' + key + b'"')  # the second naming
    with pytest.raises(ProtocolError) as ei:
        core.scan_jsonrpc(body)
    assert ei.value.status == 400 and ei.value.code == -32700
    assert str(ei.value) == f"invalid JSON at byte {at}: duplicate member name"
    assert body[at : at + 1] == b'"'


@pytest.mark.parametrize(
    "body",
    [
        b'{"jsonrpc":"2.0","method":"m","params":{"name":"a","arguments":{"x":1},"arguments":{"x":2}}}',
        b'{"jsonrpc":"2.0","method":"m","params":{"name":"a","arguments":{"name":1,"name":2}}}',
        b'{"jsonrpc":"2.0","id":1,"result":{"id":1,"id":2}}',
        b'{"jsonrpc":"2.0","id":1,"error":{"code":1,"message":"a","message":"b"}}',
        b'{"jsonrpc":"2.0","method":"m","x":1,"x":2}',
    ],
)  # fmt: skip
def test_duplicates_of_other_members_pass(core, body):
    env = core.scan_jsonrpc(body)
    assert env.method == "m" or env.id == 1


# -- batches -------------------------------------------------------------------------------


def test_batch(core):
    msgs = [
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a"}}',
        b'{"jsonrpc":"2.0","method":"notifications/progress","params":{"_meta":{"progressToken":3}}}',
        b'{"jsonrpc":"2.0","id":"r","result":{"method":"no"}}',
        b'{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"x"}}',
    ]
    body = b" [ " + b" ,\n".join(msgs) + b" ] \n"
    envs = scan(core, body)
    assert isinstance(envs, list) and [e.kind for e in envs] == [1, 2, 3, 4]
    assert [text(body, (e.start, e.end)) for e in envs] == msgs
    assert [e.method for e in envs] == ["tools/call", "notifications/progress", None, None]
    assert [e.id for e in envs] == [1, None, "r", None]
    assert envs[0].name == "a" and envs[1].progress_token == 3 and envs[3].error_code == -32600
    for env in envs:
        check_spans(body, env)


def test_batch_of_one(core):
    envs = scan(core, b'[{"jsonrpc":"2.0","method":"m"}]')
    assert isinstance(envs, list) and len(envs) == 1 and envs[0].method == "m"


def test_big_batch(core):
    msgs = [b'{"jsonrpc":"2.0","id":%d,"method":"m%d"}' % (k, k) for k in range(1000)]
    envs = scan(core, b"[" + b",".join(msgs) + b"]")
    assert [e.id for e in envs] == list(range(1000))
    assert envs[999].method == "m999"


# -- malformed text (-32700) ------------------------------------------------------------------

VALID = [
    b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","arguments":{"a":[1,2.5e-3,true,null,"\\u00e9\xc3\xa9"]}}}',
    b' [ {"jsonrpc" : "2.0" , "method" : "m" } , {"jsonrpc":"2.0","id":"\\ud83d\\ude00","result":-0.5E+2} ] ',
    b'{"jsonrpc":"2.0","id":-12,"error":{"code":-32000,"message":"a\\"b\\\\c\\/d","data":[[],{}]}}',
    b'{"\\u006aa":false,"jsonrpc":"2.0","id":null,"result":{"k":"\xf0\x9f\x98\x80"}}',
]


@pytest.mark.parametrize("body", VALID)
def test_every_prefix(core, body):
    """A cut body is a -32700 -- or, when the cut falls in trailing whitespace, the same
    valid parse; never a crash or a -32600."""
    whole = scan(core, body)
    for cut in range(len(body)):
        prefix = body[:cut]
        if body[cut:].strip(b" \t\r\n") == b"":
            scan(core, prefix)
            continue
        parse_error(core, prefix)
    assert whole is not None


@pytest.mark.parametrize(
    "body",
    [
        b"", b" ", b"\n\t\r ", b"{", b"}", b"[", b"]", b"{]", b"[}", b"{}}", b"[]]", b"{,}", b"[,]", b"[1,]",
        b'{"a":1,}', b'{"a" 1}', b'{"a":}', b'{"a"}', b"{a:1}", b"{'a':1}", b'{"a":1 "b":2}', b'{1:2}',
        b'{"jsonrpc":"2.0","id":1,"result":1}{}', b'{"jsonrpc":"2.0","id":1,"result":1},', b'{"a":tru}',
        b'{"a":nul}', b'{"a":True}', b'{"a":NaN}', b'{"a":Infinity}', b'{"a":-Infinity}', b'{"a":undefined}',
        b'{"a":"x}', b'{"a":"\\"}', b'{"a":"\\x"}', b'{"a":"\\u12"}', b'{"a":"\\u12g4"}', b"{\"a\":'x'}",
        b'{"a":[1 2]}', b'{"a":{"b"}}', b"\x00", b"\xff", b'{"a":1}\x00', b'/*c*/{"a":1}', b'{"a":1}//',
    ],
)  # fmt: skip
def test_malformed(core, body):
    parse_error(core, body)


@pytest.mark.parametrize(
    "number",
    [b"01", b"-01", b"+1", b".5", b"1.", b"1.e5", b"1e", b"1e+", b"1E-", b"-", b"--1", b"0x10", b"1_000", b"1e5.5", b"0.-1", b"- 1"],
)
def test_bad_numbers(core, number):
    for body in (b'{"jsonrpc":"2.0","id":' + number + b',"method":"m"}', b'{"jsonrpc":"2.0","id":1,"result":[' + number + b"]}"):
        parse_error(core, body)


@pytest.mark.parametrize(
    "number, ok",
    [
        (b"1e308", True), (b"1.7976931348623157e308", True), (b"1.7976931348623159e308", False), (b"1e309", False),
        (b"1e400", False), (b"-1e400", False), (b"1e-400", True), (b"0e999999999999", True), (b"0.0000e99999", True),
        (b"1" + b"0" * 308, True), (b"1" + b"0" * 309, False), (b"-" + b"9" * 309, False), (b"0." + b"0" * 400 + b"1e400", True),
        (b"0." + b"0" * 20 + b"1e328", True), (b"0." + b"0" * 20 + b"1e330", False), (b"0.1e310", False), (b"123.456e306", True), (b"123.456e307", False),
        (b"1e00000000000000000000308", True), (b"1e00000000000000000000309", False),
    ],
)  # fmt: skip
def test_number_range(core, number, ok):
    """Numbers are refused when orjson would refuse them: infinite as a double."""
    try:
        orjson.loads(number)
        oracle = True
    except orjson.JSONDecodeError:
        oracle = False
    assert oracle == ok
    for body in (b'{"jsonrpc":"2.0","id":1,"result":' + number + b"}", b'{"jsonrpc":"2.0","id":1,"result":{"a":[' + number + b"]}}"):
        if ok:
            scan(core, body)
        else:
            assert "range" in str(parse_error(core, body))


# -- strings: control characters, UTF-8, surrogates ------------------------------------------

BAD_UTF8 = [
    b"\x80", b"\xbf", b"\xc0\x80", b"\xc1\xbf", b"\xc2", b"\xc2\x41", b"\xe0\x80\x80", b"\xe0\x9f\xbf", b"\xe2\x82",
    b"\xe2\x28\xa1", b"\xed\xa0\x80", b"\xed\xbf\xbf", b"\xf0\x80\x80\x80", b"\xf0\x8f\xbf\xbf", b"\xf4\x90\x80\x80",
    b"\xf5\x80\x80\x80", b"\xf8\x88\x80\x80\x80", b"\xfe", b"\xff", b"\xf0\x9f\x98", b"\xc3\xa9\x80",
]  # fmt: skip
GOOD_UTF8 = [b"\xc2\x80", b"\xdf\xbf", b"\xe0\xa0\x80", b"\xed\x9f\xbf", b"\xee\x80\x80", b"\xef\xbf\xbf", b"\xf0\x90\x80\x80", b"\xf4\x8f\xbf\xbf"]


def _string_places(raw: bytes):
    """A string holding ``raw`` in each kind of place: walked value, key, skipped value,
    deep skipped key, and at a 16-byte block boundary of a long string."""
    yield b'{"jsonrpc":"2.0","method":"m","params":{"name":"' + raw + b'"}}'
    yield b'{"jsonrpc":"2.0","method":"m","params":{"' + raw + b'":1}}'
    yield b'{"jsonrpc":"2.0","id":1,"result":["' + raw + b'"]}'
    yield b'{"jsonrpc":"2.0","id":1,"result":{"a":{"' + raw + b'":1}}}'
    for pad in range(0, 40, 7):
        yield b'{"jsonrpc":"2.0","id":1,"result":"' + b"x" * pad + raw + b"y" * 40 + b'"}'


@pytest.mark.parametrize("raw", BAD_UTF8)
def test_invalid_utf8(core, raw):
    for body in _string_places(raw):
        assert "UTF-8" in str(parse_error(core, body))


@pytest.mark.parametrize("raw", GOOD_UTF8)
def test_valid_utf8_edges(core, raw):
    for body in _string_places(raw):
        scan(core, body)
    env = one(core, b'{"jsonrpc":"2.0","method":"' + raw + b'"}')
    assert env.method == raw.decode("utf-8")


def test_invalid_utf8_outside_strings(core):
    parse_error(core, b'{"jsonrpc":"2.0","id":1,"result":\xc3\xa9}')
    parse_error(core, b'{"jsonrpc":"2.0",\xc3\xa9"id":1,"result":1}')


@pytest.mark.parametrize("ctrl", [bytes([c]) for c in range(0x20)])
def test_raw_control_characters(core, ctrl):
    for body in _string_places(ctrl):
        assert "control" in str(parse_error(core, body))
    escaped = b"\\u%04x" % ctrl[0]
    one(core, b'{"jsonrpc":"2.0","method":"m","params":{"name":"' + escaped + b'"}}', name=ctrl.decode())


@pytest.mark.parametrize(
    "esc",
    [b"\\ud800", b"\\udbff", b"\\udc00", b"\\udfff", b"\\ud800x", b"\\ud800\\u0041", b"\\ud800\\ud800", b"\\udc00\\ud800",
     b"\\ud800\\n", b"\\ud800\\", b"\\ud800\\u", b"\\ud800\\udc0"],
)  # fmt: skip
def test_lone_surrogate_escapes(core, esc):
    """RFC 8259 §7 allows "\\ud800" syntactically but it is no character; orjson refuses
    it and so do we: a high surrogate escape must be followed by a low one."""
    for body in _string_places(esc):
        parse_error(core, body)
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(b'"' + esc + b'"')


def test_long_strings_with_stops_everywhere(core):
    """Quotes, escapes and non-ASCII at every offset of a long string: the block and word
    loops must hand over exactly."""
    for pos in range(70):
        for stop in (b'\\"', b"\\\\", b"\\u00e9", b"\xc3\xa9", b"\xe4\xb8\xad", b"\xf0\x9f\x98\x80"):
            value = b"a" * pos + stop + b"b" * (69 - pos)
            body = b'{"jsonrpc":"2.0","method":"m","params":{"name":"' + value + b'"}}'
            env = one(core, body)
            assert env.name == orjson.loads(b'"' + value + b'"')
        body = b'{"jsonrpc":"2.0","method":"m","params":{"name":"' + b"a" * pos
        parse_error(core, body)  # unterminated, cut at every length
        parse_error(core, body + b"\x01" + b'"}}')


# -- nesting depth ---------------------------------------------------------------------------

MAX_DEPTH = 512


def _nest(levels: int, kinds: str = "[") -> bytes:
    opens = [(b"[" if kinds[k % len(kinds)] == "[" else b'{"k":') for k in range(levels)]
    closes = [(b"]" if o == b"[" else b"}") for o in reversed(opens)]
    return b"".join(opens) + b"0" + b"".join(closes)


@pytest.mark.parametrize("kinds", ["[", "{", "[{"])
def test_depth_limit(core, kinds):
    """At most 512 containers open at once, counting the message object (and the batch
    array); the same in walked and skipped parts."""
    for prefix, suffix, used in [
        (b'{"jsonrpc":"2.0","id":1,"result":', b"}", 1),
        (b'[{"jsonrpc":"2.0","id":1,"result":', b"}]", 2),
        (b'{"jsonrpc":"2.0","method":"m","params":{"arguments":', b"}}", 2),
        (b'{"jsonrpc":"2.0","method":"m","params":{"_meta":{"x":', b"}}}", 3),
        (b'{"jsonrpc":"2.0","id":1,"error":{"data":', b"}}", 2),
    ]:
        scan(core, prefix + _nest(MAX_DEPTH - used, kinds) + suffix)
        assert "nesting" in str(parse_error(core, prefix + _nest(MAX_DEPTH - used + 1, kinds) + suffix))


def test_depth_limit_top_level_values(core):
    invalid(core, _nest(MAX_DEPTH))  # valid JSON, not a message
    parse_error(core, _nest(MAX_DEPTH + 1))
    invalid(core, _nest(MAX_DEPTH, "{"))
    parse_error(core, _nest(MAX_DEPTH + 1, "{"))


def test_very_deep_does_not_crash(core):
    for body in (b"[" * 200_000, b'{"a":' * 100_000, b'{"jsonrpc":"2.0","id":1,"result":' + b"[" * 200_000):
        assert "nesting" in str(parse_error(core, body))


# -- input buffers ---------------------------------------------------------------------------

BODY = b'{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"n\\u00e9","_meta":{"progressToken":"t"}}}'


def _snapshot(env):
    return tuple(getattr(env, f) for f in ("kind", "start", "end", "method", "id", "name", "progress_token")) + tuple(
        getattr(env, f + "_span") for f in SPAN_FIELDS
    )


@pytest.mark.parametrize("wrap", [bytes, bytearray, memoryview, lambda b: memoryview(bytearray(b))])
def test_buffer_types(core, wrap):
    assert _snapshot(scan(core, wrap(BODY))) == _snapshot(scan(core, BODY))


def test_memoryview_slice_offsets_are_relative(core):
    padded = b"xxxx" + BODY + b"yyyy"
    env = scan(core, memoryview(padded)[4:-4])
    assert _snapshot(env) == _snapshot(scan(core, BODY))


def test_bad_buffers(core):
    with pytest.raises(TypeError):
        scan(core, BODY.decode())
    with pytest.raises(TypeError):
        scan(core, None)
    with pytest.raises(BufferError):
        scan(core, memoryview(b" " + BODY)[::2])


def _guarded(body: bytes) -> memoryview:
    """``body`` placed so that its last byte is the last readable byte before a page the
    process may not touch: reading one byte past the end crashes the test run."""
    libc = ctypes.CDLL(None, use_errno=True)
    page = mmap.PAGESIZE
    size = (len(body) // page + 2) * page
    area = mmap.mmap(-1, size, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    start = size - page - len(body)
    area[start : start + len(body)] = body
    base = ctypes.addressof(ctypes.c_char.from_buffer(area))
    if libc.mprotect(ctypes.c_void_p(base + size - page), page, 0) != 0:  # PROT_NONE
        pytest.skip("mprotect unavailable")
    return memoryview(area)[start : start + len(body)]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs mmap + mprotect")
def test_no_read_past_the_end(core):
    """The block and word loops never load past the end of the body."""
    bodies = [b[:k] for b in VALID for k in range(len(b) + 1)]
    for n in range(80):
        bodies.append(b'{"jsonrpc":"2.0","id":1,"result":"' + b"a" * n)  # unterminated
        bodies.append(b'{"jsonrpc":"2.0","id":1,"result":"' + b"a" * n + b'"}')
        bodies.append(b'{"jsonrpc":"2.0","id":1,"result":[' + b"1" * (n + 1))
        bodies.append(b'{"jsonrpc":"2.0","id":1,"result":"' + b"a" * n + b"\\u00")
        bodies.append(b'{"jsonrpc":"2.0","id":1,"result":"' + b"a" * n + b"\xe4\xb8")
    for body in bodies:
        want = outcome_of(core, body)
        assert outcome_of(core, _guarded(body)) == want


def outcome_of(core, body):
    try:
        envs = core.scan_jsonrpc(body)
    except ProtocolError as exc:
        return (exc.code, str(exc))
    return [_snapshot(e) for e in (envs if isinstance(envs, list) else [envs])]


def test_envelope_survives_buffer_change(core):
    buf = bytearray(BODY)
    env = scan(core, buf)
    buf[:] = b"x" * len(buf)
    assert (env.method, env.name, env.progress_token) == ("tools/call", "n\u00e9", "t")


# -- splice --------------------------------------------------------------------------------


def test_splice_rewrites_id(core):
    env = scan(core, BODY)
    out = core.splice(BODY, *env.id_span, b'"gw-17"')
    assert type(out) is bytes
    again = scan(core, out)
    assert (again.id, again.method, again.name) == ("gw-17", "tools/call", "n\u00e9")


@pytest.mark.parametrize(
    "start, end, rep, want",
    [(0, 0, b"<", b"<abcdef"), (6, 6, b">", b"abcdef>"), (2, 4, b"", b"abef"), (0, 6, b"Z", b"Z"), (1, 2, b"XYZ", b"aXYZcdef"), (3, 3, b"", b"abcdef")],
)
def test_splice(core, start, end, rep, want):
    for body in (b"abcdef", bytearray(b"abcdef"), memoryview(b"abcdef"), memoryview(b"--abcdef--")[2:-2]):
        for r in (rep, bytearray(rep), memoryview(rep)):
            out = core.splice(body, start, end, r)
            assert type(out) is bytes and out == want


@pytest.mark.parametrize("start, end", [(-1, 2), (3, 2), (0, 7), (7, 7), (-1, -1)])
def test_splice_bad_range(core, start, end):
    with pytest.raises(ValueError):
        core.splice(b"abcdef", start, end, b"x")


def test_splice_bad_types(core):
    with pytest.raises(TypeError):
        core.splice(b"abc", 0.5, 1, b"x")
    with pytest.raises(TypeError):
        core.splice(b"abc", 0, 1, "x")
    with pytest.raises(TypeError):
        core.splice("abc", 0, 1, b"x")


def test_splice_many(core):
    body = b"0123456789"
    assert core.splice_many(body, []) == body
    assert type(core.splice_many(bytearray(body), [])) is bytes
    assert core.splice_many(body, [(8, 10, b"E"), (0, 1, b"A"), (4, 4, b"+")]) == b"A123+4567E"
    assert core.splice_many(body, [(0, 2, b"x"), (2, 4, b"y")]) == b"xy456789"  # adjacent
    assert core.splice_many(memoryview(body), iter([(1, 2, bytearray(b"B")), (3, 4, memoryview(b"D"))])) == b"0B2D456789"


@pytest.mark.parametrize(
    "edits",
    [
        [(0, 3, b"a"), (2, 5, b"b")], [(2, 5, b"b"), (0, 3, b"a")], [(0, 10, b""), (4, 5, b"")],
        [(3, 3, b"x"), (3, 3, b"y")], [(3, 3, b"x"), (3, 4, b"y")], [(0, 11, b"")], [(-1, 0, b"")], [(5, 4, b"")],
    ],
)  # fmt: skip
def test_splice_many_refused(core, edits):
    with pytest.raises(ValueError):
        core.splice_many(b"0123456789", edits)


def test_splice_buffers_must_be_contiguous(core):
    strided = memoryview(b"abcd")[::2]
    for call in (
        lambda: core.splice(strided, 0, 1, b"x"),
        lambda: core.splice(b"abc", 0, 1, strided),
        lambda: core.splice_many(strided, [(0, 1, b"x")]),
        lambda: core.splice_many(b"abc", [(0, 1, strided)]),
    ):
        with pytest.raises(BufferError):
            call()


def test_splice_any_buffer_format(core):
    """Buffers of other item formats count in bytes (as the buffer protocol lays them out)."""
    ints = array.array("i", [1, 2])
    raw = ints.tobytes()
    assert core.splice(ints, 0, 4, b"x") == b"x" + raw[4:]
    assert core.splice(b"abc", 0, 1, array.array("h", [7])) == array.array("h", [7]).tobytes() + b"bc"
    assert core.splice_many(ints, [(4, 8, array.array("b", [9]))]) == raw[:4] + b"\x09"


@pytest.mark.parametrize("edits", [[(0, 1)], [(0, 1, b"x", 1)], [5], None])
def test_splice_many_malformed_edits(core, edits):
    with pytest.raises((TypeError, ValueError)):
        core.splice_many(b"abc", edits)


def test_splice_many_edit_ending_where_next_starts(core):
    assert core.splice_many(b"0123456789", [(5, 5, b"|"), (2, 5, b"-")]) == b"01-|56789"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.binary(max_size=40), data=st.data())
def test_splice_many_matches_naive(core, body, data):
    n = len(body)
    cuts = sorted(data.draw(st.lists(st.integers(0, n), max_size=8)))
    edits, pos = [], -1
    for a, b in zip(cuts[::2], cuts[1::2]):
        if a > pos:  # keep starts distinct and ranges apart
            edits.append((a, b, data.draw(st.binary(max_size=5))))
            pos = max(a, b)
    want, last = [], 0
    for a, b, rep in edits:
        want += [body[last:a], rep]
        last = b
    want.append(body[last:])
    shuffled = data.draw(st.permutations(edits))
    assert core.splice_many(body, shuffled) == b"".join(want)
    if edits:
        a, b, rep = edits[0]
        assert core.splice(body, a, b, rep) == body[:a] + rep + body[b:]


# -- both cores agree on every message text -------------------------------------------------


def test_error_messages_agree(py_core, c_core):
    """The twins report the same fault at the same offset with the same words."""
    cases = VALID + [b[:k] for b in VALID for k in range(0, len(b), 3)]
    cases += [b'{"jsonrpc":"2.0","method":"m","params":{"name":"' + raw + b'"}}' for raw in BAD_UTF8 + [b"\x01", b"\\ud800"]]
    cases += [b'{"jsonrpc":"2.0","id":' + n + b',"method":"m"}' for n in (b"01", b"1.", b"1e", b"-", b"1e400", b"1.0")]
    rnd = random.Random(5)
    for body in VALID:
        for _ in range(200):
            buf = bytearray(body)
            buf[rnd.randrange(len(buf))] = rnd.randrange(256)
            cases.append(bytes(buf))
    for body in cases:
        got = []
        for core in (py_core, c_core):
            try:
                envs = core.scan_jsonrpc(body)
                got.append(("ok", [_snapshot(e) for e in (envs if isinstance(envs, list) else [envs])]))
            except ProtocolError as exc:
                got.append((exc.status, exc.code, str(exc)))
        assert got[0] == got[1], body


def test_repr(core):
    assert "tools/call" in repr(scan(core, BODY))
