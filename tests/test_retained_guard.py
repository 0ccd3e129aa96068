"""gateway/retained.py: which retained messages are junk, and our own clears' echoes."""

from __future__ import annotations

from gateway.retained import RetainedGuard, Verdict


def test_only_a_boxs_status_may_be_retained():
    g = RetainedGuard("pb")
    assert g.check("pb/box-1/status", b'{"v":1,"online":false}', True) is Verdict.PASS  # status, last will
    for topic in ("pb/box-1/event", "pb/box-1/photo/abcdefgh/0", "pb/box-1/cmd/result", "pb/box-1/ota/reply"):
        assert g.check(topic, b"x", True) is Verdict.JUNK
        assert g.check(topic, b"x", False) is Verdict.PASS  # live: the protocol's business, not ours
    assert g.check("pb/box-1/status/deeper", b"x", True) is Verdict.JUNK
    assert g.check("other/box-1/status", b"x", True) is Verdict.JUNK
    assert g.check("pb/box-1/event", b"", True) is Verdict.PASS  # an empty retained message is a clear


def test_each_clear_has_one_echo_and_the_bookkeeping_is_bounded():
    g = RetainedGuard("pb", max_pending=2)
    assert g.check("pb/a/event", b"x", True) is Verdict.JUNK
    assert g.check("pb/a/event", b"y", True) is Verdict.JUNK  # replayed twice (two subscribes): two clears
    assert g.pending_echoes == 2
    assert g.check("pb/a/event", b"", False) is Verdict.ECHO
    assert g.check("pb/a/event", b"", False) is Verdict.ECHO
    assert g.check("pb/a/event", b"", False) is Verdict.PASS  # no clear pending: an empty event, as ever
    assert g.check("pb/b/event", b"x", True) is Verdict.JUNK
    assert g.check("pb/c/event", b"x", True) is Verdict.JUNK
    assert g.check("pb/d/event", b"x", True) is Verdict.JUNK  # still junk, but its echo is not tracked
    assert g.pending_echoes == 2
    assert g.check("pb/d/event", b"", False) is Verdict.PASS
