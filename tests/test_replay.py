"""transport/messages.py ``Replay``: the bookkeeping behind resumable answers of
message-level backends -- byte counts that return to zero, the per-answer and
per-session shares, expiry, ids that resolve only in their own session -- and a resumed
stream whose client stops reading: the record is its buffer, and it catches up in order
when the client reads again."""

from __future__ import annotations

import orjson

from mcpfast.transport.http_mcp import CallHandler
from mcpfast.transport.messages import _KEEP, MessageCall, Replay
from mcpfast.transport.pool import UpstreamError


def _msg(i: int, size: int = 10) -> bytes:
    return orjson.dumps({"jsonrpc": "2.0", "method": "notifications/message", "params": {"data": str(i) * size}})


def test_sizes_return_to_zero_and_ids_resolve_only_in_their_session():
    r = Replay(1 << 20)
    a = r.open("sa", b"1")
    b = r.open("sb", b'"x"')
    for i in range(5):
        a.append(_msg(i), False)
    a.append(b'{"jsonrpc":"2.0","id":1,"result":{}}', True)
    assert a.finished and a.next == 7
    assert r.find("sa", a.event_id(0)) == (a, 0)
    assert r.find("sa", a.event_id(6)) == (a, 6)
    assert r.find("sa", a.event_id(7)) is None  # not sent yet
    assert r.find("sb", a.event_id(0)) is None  # another session's
    for bad in (b"", b".", a.key, a.key + b".x", a.key + b".-1", a.key + b"." + b"9" * 40, b"nope.1.1"):
        assert r.find("sa", bad) is None, bad
    r.forget("sa")
    assert r.find("sa", a.event_id(0)) is None and not a.kept and not a.events
    r.forget("sb")
    assert r.size == 0 and not r.records and not r.sessions and not b.kept


def test_one_answer_keeps_its_newest_messages_within_a_session_share():
    r = Replay(8 * 4096)  # a share of 4096 bytes
    a = r.open("s", b"1")
    for i in range(100):
        a.append(_msg(i, 100), False)
    assert a.size <= r.share and r.size == a.size == r.sessions["s"][0]
    assert a.first > 1 and a.next == 101
    assert r.find("s", a.event_id(0)) is None  # its start was dropped for room
    assert a.since(a.first - 2) is None
    tail = a.since(a.next - 3)
    assert [orjson.loads(m.data)["params"]["data"][:2] for m in tail] == ["98", "99"]


def test_a_session_over_its_share_drops_its_own_oldest_answers_first():
    r = Replay(8 * 2048)
    other = r.open("victim", b"1")
    other.append(_msg(0), True)
    mine = []
    for i in range(50):
        rec = r.open("flood", b"%d" % i)
        rec.append(_msg(i, 200), True)
        mine.append(rec)
    assert other.kept and r.find("victim", other.event_id(1)) == (other, 1)
    assert mine[-1].kept and not mine[0].kept
    assert r.sessions["flood"][0] <= r.share
    assert r.size == sum(x.size for x in r.records.values())


def test_a_finished_answer_expires():
    r = Replay(1 << 20)
    old = r.open("s", b"1")
    old.append(_msg(0), True)
    old.ended_at -= _KEEP + 1
    live = r.open("s", b"2")  # opening a record sweeps the expired ones
    assert not old.kept and live.kept and list(r.records) == [live.key]


class _Client(CallHandler):
    def __init__(self) -> None:
        self.events: list[bytes] = []
        self.ended = False

    def on_head(self, call, head) -> None:
        assert head.status == 200 and call.events

    def on_event(self, call, ev) -> None:
        self.events.append(bytes(ev.id))

    def on_flush(self, call) -> None:
        pass

    def on_end(self, call, body) -> None:
        self.ended = True


class _Reader(MessageCall):
    """A resumed stream with nothing of a transport's own."""

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False
        self.catch_up()


def test_a_resumed_stream_whose_client_stops_reading_catches_up_in_order():
    r = Replay(1 << 20)
    rec = r.open("s", b"1")
    for i in range(3):
        rec.append(_msg(i), False)
    client = _Client()
    reader = _Reader(client, "b")
    reader.listen = True
    reader.replay_from(rec, 1)  # the client had the priming event and message 1
    assert client.events == [rec.event_id(2), rec.event_id(3)]
    reader.pause_reading()
    for i in range(3, 6):
        rec.append(_msg(i), False)
    assert len(client.events) == 2  # nothing while it does not read
    rec.append(b'{"jsonrpc":"2.0","id":1,"result":{}}', True)
    assert not client.ended
    reader.resume_reading()
    assert client.events == [rec.event_id(i) for i in range(2, 8)] and client.ended
    assert rec.reader is None


def test_a_paused_stream_whose_record_was_dropped_ends():
    r = Replay(1 << 20)
    rec = r.open("s", b"1")
    rec.append(_msg(0), False)
    client = _Client()
    reader = _Reader(client, "b")
    reader.listen = True
    reader.replay_from(rec, 0)
    reader.pause_reading()
    r.forget("s")  # the session ended meanwhile
    rec.append(_msg(1), False)
    reader.resume_reading()
    assert client.ended and client.events == [rec.event_id(1)]


def test_a_newer_resumption_takes_over_and_an_error_ends_the_record():
    r = Replay(1 << 20)
    rec = r.open("s", b'"req-9"')
    rec.append(_msg(0), False)
    first, second = _Client(), _Client()
    a = _Reader(first, "b")
    a.listen = True
    a.replay_from(rec, 0)
    b = _Reader(second, "b")
    b.listen = True
    b.replay_from(rec, 0)
    assert first.ended and not second.ended and rec.reader is b
    err = orjson.loads(rec.error_body(UpstreamError("upstream_unavailable", "backend b: process 7 exited (status 3)", 502)))
    assert err == {"jsonrpc": "2.0", "id": "req-9", "error": {"code": -32603, "message": "backend b: process 7 exited (status 3)"}}
