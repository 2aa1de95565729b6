"""The metric hub (``runtime.collective``): ranks as threads of this process on loopback, no
Ray. It binds the address it is given, admits only ranks that prove the run's secret (a
stranger is closed, takes no rank slot and adds nothing to the sum), fails a round within
its bound when a rank goes silent, and never shows the secret."""

from __future__ import annotations

import os
import pickle
import socket
import struct
import threading
import time

import numpy as np
import pytest

from shardtrain.errors import ConfigError, WorkerError
from shardtrain.runtime import collective
from shardtrain.runtime.collective import HubTicket, StarAllreduce, open_hub

HOST = "127.0.0.1"
FAST = dict(peer_timeout_s=1.0, join_timeout_s=10.0, handshake_timeout_s=2.0)


def _hub():
    server, port = open_hub(HOST)
    return server, HubTicket.new(HOST, port)


class Rank(threading.Thread):
    """One rank: joins, sums ``vectors`` (one round each), closes; keeps results or error."""

    def __init__(self, rank, world, ticket, server=None, vectors=(), before_sum=None, **kw):
        super().__init__(daemon=True, name=f"rank-{rank}")
        self.args = (rank, world, ticket, server)
        self.vectors, self.before_sum, self.kw = list(vectors), before_sum, {**FAST, **kw}
        self.results: list[np.ndarray] = []
        self.error: BaseException | None = None
        self.failed_after: float | None = None
        self.allreduce: StarAllreduce | None = None

    def run(self):
        started = time.monotonic()
        allreduce = None
        try:
            allreduce = self.allreduce = StarAllreduce(*self.args, **self.kw)
            if self.before_sum is not None:
                self.before_sum()
            started = time.monotonic()
            for vector in self.vectors:
                self.results.append(allreduce.sum(vector))
        except BaseException as exc:  # reported to the test
            self.error = exc
            self.failed_after = time.monotonic() - started
        finally:
            if allreduce is not None:
                allreduce.close()


def _finish(*ranks, within: float = 15.0):
    deadline = time.monotonic() + within
    for rank in ranks:
        rank.join(max(0.0, deadline - time.monotonic()))
    hung = [r.name for r in ranks if r.is_alive()]
    assert not hung, f"{hung} still running after {within} s"


def _world(world, vectors, **kw):
    """Every rank of a world summing its own vectors; the ranks, started."""
    server, ticket = _hub()
    ranks = [
        Rank(r, world, ticket, server if r == 0 else None, vectors[r], **kw) for r in range(world)
    ]
    for rank in ranks:
        rank.start()
    return ranks


# -- a stranger on the wire -----------------------------------------------------------------


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection((HOST, port), timeout=5)
    sock.settimeout(5)
    return sock


def _read_until_closed(sock: socket.socket) -> bytes:
    data = b""
    while True:
        try:
            chunk = sock.recv(4096)
        except (ConnectionResetError, TimeoutError):
            return data
        if not chunk:
            return data
        data += chunk


def _impostor_answer(hello: bytes, rank: int, secret: bytes) -> bytes:
    """The answer a peer with ``secret`` gives (right protocol, maybe the wrong secret)."""
    magic, nonce = hello[:8], hello[8:]
    peer_nonce = os.urandom(32)
    proof = collective._mac(secret, b"rank", nonce, peer_nonce, rank)
    return magic + struct.pack("!I", rank) + peer_nonce + proof


def test_ranks_sum_their_vectors():
    world = 4
    vectors = [[np.arange(5, dtype=float) * (r + 1) + r for _ in range(3)] for r in range(world)]
    ranks = _world(world, vectors)
    _finish(*ranks)
    expected = sum(np.arange(5, dtype=float) * (r + 1) + r for r in range(world))
    for rank in ranks:
        assert rank.error is None, rank.error
        assert len(rank.results) == 3
        for result in rank.results:
            np.testing.assert_array_equal(result, expected)


def test_the_hub_binds_the_address_it_is_given_never_every_interface():
    server, port = open_hub(HOST)
    try:
        assert server.getsockname() == (HOST, port)
    finally:
        server.close()
    for anywhere in ("0.0.0.0", ""):
        with pytest.raises(ConfigError, match="own address"):
            open_hub(anywhere)


@pytest.mark.parametrize("stranger", ["silent", "garbage", "wrong_secret", "framed_vector"])
def test_a_stranger_is_refused_and_the_ranks_still_complete(stranger):
    """The stranger connects first and claims rank 1 where it can: it takes no slot, gets
    closed, and the real ranks sum as if it were not there."""
    world = 3
    server, ticket = _hub()
    ranks = [
        Rank(r, world, ticket, server if r == 0 else None, [np.full(3, r + 1.0)] * 2)
        for r in range(world)
    ]
    ranks[0].start()  # the hub is admitting
    sock = _connect(ticket.port)
    if stranger == "garbage":
        sock.sendall(os.urandom(200))
    elif stranger == "wrong_secret":
        hello = sock.recv(40)
        sock.sendall(_impostor_answer(hello, 1, os.urandom(32)))
    elif stranger == "framed_vector":  # what a real rank sent before the handshake existed
        payload = np.full(3, 1e9).tobytes()
        sock.sendall(struct.pack("!Q", len(payload)) + payload)
    time.sleep(0.2)  # the stranger is first in line
    started = time.monotonic()
    for rank in ranks[1:]:
        rank.start()
    _finish(*ranks)
    # side by side: a silent stranger does not hold the ranks for its handshake bound
    assert time.monotonic() - started < FAST["handshake_timeout_s"]
    for rank in ranks:
        assert rank.error is None, rank.error
        for result in rank.results:
            np.testing.assert_array_equal(result, np.full(3, 6.0))
    # the stranger is closed without the hub's proof (at most the greeting it was sent)
    assert len(_read_until_closed(sock)) <= 40
    sock.close()


def test_a_silent_stranger_is_closed_within_the_handshake_bound():
    world = 3
    server, ticket = _hub()
    ranks = [
        Rank(0, world, ticket, server, [np.ones(2)], handshake_timeout_s=0.5),
        Rank(1, world, ticket, None, [np.ones(2)], handshake_timeout_s=0.5),
    ]
    for rank in ranks:
        rank.start()
    time.sleep(0.2)
    sock = _connect(ticket.port)
    started = time.monotonic()
    assert len(_read_until_closed(sock)) == 40  # greeted, then dropped
    closed_after = time.monotonic() - started
    sock.close()
    assert closed_after < 2.0, closed_after
    assert all(rank.is_alive() for rank in ranks)  # still waiting for rank 2, not done
    ranks.append(Rank(2, world, ticket, None, [np.ones(2)], handshake_timeout_s=0.5))
    ranks[-1].start()
    _finish(*ranks)
    for rank in ranks:
        assert rank.error is None, rank.error
        np.testing.assert_array_equal(rank.results[0], np.full(2, 3.0))


def test_a_duplicate_rank_is_refused():
    world = 3
    server, ticket = _hub()
    ranks = [
        Rank(0, world, ticket, server, [np.ones(2)]),
        Rank(1, world, ticket, None, [np.ones(2)]),
        Rank(1, world, ticket, None, [np.ones(2)]),
        Rank(2, world, ticket, None, [np.ones(2)]),
    ]
    for rank in ranks:
        rank.start()
    _finish(*ranks)
    ones = ranks[1:3]
    refused = [r for r in ones if r.error is not None]
    assert len(refused) == 1, [r.error for r in ones]
    assert isinstance(refused[0].error, WorkerError)
    assert "refused rank 1" in str(refused[0].error)
    for rank in (ranks[0], ranks[3], *(r for r in ones if r.error is None)):
        assert rank.error is None, rank.error
        np.testing.assert_array_equal(rank.results[0], np.full(2, 3.0))


def test_a_rank_does_not_join_a_hub_that_cannot_prove_the_secret():
    """An impostor hub (the port taken by someone else) cannot feed the ranks sums."""
    server, port = open_hub(HOST)
    ticket = HubTicket.new(HOST, port)
    rank = Rank(1, 2, ticket, None, [np.ones(2)])
    rank.start()
    conn, _ = server.accept()
    conn.sendall(b"shtrhub1" + os.urandom(32))
    conn.recv(76)
    conn.sendall(os.urandom(32))  # not the hub's proof
    _finish(rank)
    conn.close()
    server.close()
    assert isinstance(rank.error, WorkerError)
    assert "not this run's hub" in str(rank.error)
    assert rank.results == []


def test_a_silent_rank_fails_the_round_within_the_bound():
    world = 3
    release = threading.Event()
    server, ticket = _hub()
    ranks = [
        Rank(0, world, ticket, server, [np.ones(2)]),
        Rank(1, world, ticket, None, [np.ones(2)]),
        # joins, then never sends its round
        Rank(2, world, ticket, None, [np.ones(2)], before_sum=lambda: release.wait(30)),
    ]
    for rank in ranks:
        rank.start()
    _finish(ranks[0], ranks[1], within=5)
    release.set()
    _finish(ranks[2])
    hub = ranks[0]
    assert isinstance(hub.error, WorkerError)
    assert "rank 2 sent nothing for 1 s" in str(hub.error)
    assert 0.9 <= hub.failed_after < 2.5, hub.failed_after
    # rank 0 closed the channel: rank 1 failed with it, well before its own (2 s) bound
    assert isinstance(ranks[1].error, WorkerError)
    assert "rank 0 (the metric hub) closed the metric channel" in str(ranks[1].error)
    assert ranks[1].failed_after < 2.0


def test_a_rank_fails_when_the_hub_goes_silent():
    world = 2
    release = threading.Event()
    server, ticket = _hub()
    ranks = [
        Rank(0, world, ticket, server, [np.ones(2)], before_sum=lambda: release.wait(30)),
        Rank(1, world, ticket, None, [np.ones(2)], peer_timeout_s=0.5),
    ]
    for rank in ranks:
        rank.start()
    _finish(ranks[1], within=5)
    release.set()
    _finish(ranks[0])
    assert isinstance(ranks[1].error, WorkerError)
    assert "rank 0 (the metric hub) sent nothing for 1 s" in str(ranks[1].error)
    assert 0.9 <= ranks[1].failed_after < 2.5, ranks[1].failed_after


def test_a_rank_that_never_joins_fails_the_hub_within_the_join_bound():
    server, ticket = _hub()
    hub = Rank(0, 3, ticket, server, [np.ones(2)], join_timeout_s=1.0)
    one = Rank(1, 3, ticket, None, [np.ones(2)], join_timeout_s=1.0)
    hub.start()
    one.start()
    _finish(hub, one, within=5)
    assert isinstance(hub.error, WorkerError)
    assert "rank 2 did not join the metric hub within 1 s" in str(hub.error)
    assert hub.failed_after < 2.5


def test_the_secret_is_in_no_repr_or_error_message():
    server, ticket = _hub()
    shown = [repr(ticket), str(ticket), repr(pickle.loads(pickle.dumps(ticket)))]
    release = threading.Event()
    ranks = [
        Rank(0, 3, ticket, server, [np.ones(2)]),
        Rank(1, 3, ticket, None, [np.ones(2)]),
        Rank(2, 3, ticket, None, [np.ones(2)], before_sum=lambda: release.wait(30)),
    ]
    for rank in ranks:
        rank.start()
    _finish(ranks[0], ranks[1], within=5)
    release.set()
    _finish(ranks[2])
    impostor = Rank(1, 2, ticket, None, [np.ones(2)])  # the hub is gone: it cannot reach it
    impostor.start()
    _finish(impostor)
    errors = [r.error for r in (*ranks, impostor) if r.error is not None]
    assert len(errors) >= 2
    for error in errors:
        shown += [repr(error), str(error), repr(getattr(error, "details", None))]
    shown += [repr(vars(r.allreduce)) for r in ranks if r.allreduce is not None]
    for text in shown:
        for form in (repr(ticket.secret), ticket.secret.hex(), ticket.secret.hex().upper()):
            assert form not in text
    assert "secret" not in repr(ticket)
