"""A minimal sum-allreduce over TCP for small vectors (per-round metric statistics).

LightGBM's network computes split histograms but not global evaluation metrics, so ranks
agree on metrics (and on early stopping) through this: rank 0 is a hub, the others connect
once, and each call sends one float64 vector up and gets the sum back.

Who may join. The hub listens on its node's own address (the one Ray uses for the node,
which the caller passes to ``open_hub``; never every interface) and admits only the run's
ranks. Whoever plans the hub draws a per-run secret (``HubTicket.new``) and hands it to the
ranks in the Ray call arguments; it never goes on the wire and is in no repr, log line or
error message. A peer that connects gets a random nonce from the hub and answers with its
rank, a nonce of its own and an HMAC-SHA256 of both nonces and the rank under the secret;
the hub checks it (``hmac.compare_digest``) and answers with an HMAC of its own, so the peer
knows the hub is the run's too (``multiprocessing.connection``'s challenge-response, both
ways). A peer whose answer is wrong, malformed, late (``HANDSHAKE_TIMEOUT_S``) or for a rank
that already joined is closed and takes no rank slot. Handshakes run side by side, so a
stranger holds up nobody.

Bounds. Every rank must join within ``JOIN_TIMEOUT_S``. Once joined, a rank that sends
nothing fails the round: rank 0 raises ``WorkerError("rank N sent nothing for 60 s")``
``PEER_TIMEOUT_S`` (60 s) after it entered the round, and closes the channel so the other
ranks fail at once. The other ranks wait up to twice that for the sum (rank 0 names the
silent rank first), then raise the same way about rank 0.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import selectors
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import cast

import numpy as np

from shardtrain.errors import ConfigError, WorkerError

#: Once joined, a rank that sends nothing for this long fails the round (seconds).
PEER_TIMEOUT_S = 60.0
#: How long rank 0 waits for every rank to connect, and a rank for the hub to greet it.
JOIN_TIMEOUT_S = 120.0
#: How long a connecting peer has to complete its handshake (a stranger's bound).
HANDSHAKE_TIMEOUT_S = 5.0
#: Handshakes in progress at once; more connections wait in the listen backlog.
MAX_PENDING = 64

_HEADER = struct.Struct("!Q")
_MAGIC = b"shtrhub1"
_NONCE = 32
_RANK = struct.Struct("!I")
_DIGEST = hashlib.sha256().digest_size
_HELLO = len(_MAGIC) + _NONCE  # hub -> peer: magic, hub nonce
_ANSWER = len(_MAGIC) + _RANK.size + _NONCE + _DIGEST  # peer -> hub: magic, rank, nonce, mac
_UNSPECIFIED = {"", "0.0.0.0", "::", "*"}


@dataclass(frozen=True)
class HubTicket:
    """What a rank needs to join the hub: its address and the run's secret (never shown)."""

    host: str
    port: int
    secret: bytes = field(repr=False)

    @classmethod
    def new(cls, host: str, port: int) -> HubTicket:
        """A ticket with a fresh per-run secret (32 random bytes)."""
        return cls(host, int(port), secrets.token_bytes(32))


def open_hub(host: str) -> tuple[socket.socket, int]:
    """Rank 0's listening socket on ``host`` (its node's own address, e.g. Ray's
    ``ray.util.get_node_ip_address()``; loopback in tests) and a free port, bound before the
    port is published."""
    if host in _UNSPECIFIED:
        raise ConfigError(
            f"the metric hub must listen on its node's own address, not {host!r} (every "
            "interface); pass the address Ray uses for the node."
        )
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    server = socket.socket(family, socket.SOCK_STREAM)
    try:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind((host, 0))
        server.listen()
    except BaseException:
        server.close()
        raise
    return server, server.getsockname()[1]


def _mac(secret: bytes, role: bytes, hub_nonce: bytes, peer_nonce: bytes, rank: int) -> bytes:
    message = role + hub_nonce + peer_nonce + _RANK.pack(rank)
    return hmac.new(secret, message, hashlib.sha256).digest()


def _recv_exact(sock: socket.socket, size: int, deadline: float, who: str, bound: float) -> bytes:
    """``size`` bytes from ``who`` by ``deadline`` (``time.monotonic``), else a WorkerError."""
    chunks, got = [], 0
    while got < size:
        remaining = deadline - time.monotonic()
        try:
            if remaining <= 0:
                raise TimeoutError
            sock.settimeout(remaining)
            chunk = sock.recv(size - got)
        except TimeoutError:
            what = "nothing" if got == 0 else "only part of a message"
            raise WorkerError(
                f"{who} sent {what} for {bound:g} s over the metric channel; it is stuck or "
                "gone (see that rank's error, if any)."
            ) from None
        except OSError as exc:
            raise WorkerError(
                f"the metric channel to {who} broke ({type(exc).__name__}: {exc}); did that "
                "rank fail?"
            ) from None
        if not chunk:
            raise WorkerError(f"{who} closed the metric channel (did that rank fail?).")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _send(sock: socket.socket, vector: np.ndarray, timeout: float, who: str) -> None:
    payload = np.ascontiguousarray(vector, dtype=np.float64).tobytes()
    try:
        sock.settimeout(timeout)
        sock.sendall(_HEADER.pack(len(payload)) + payload)
    except OSError as exc:
        raise WorkerError(
            f"could not send to {who} over the metric channel ({type(exc).__name__}); did "
            "that rank fail?"
        ) from None


def _recv(sock: socket.socket, length: int, deadline: float, who: str, bound: float):
    (size,) = _HEADER.unpack(_recv_exact(sock, _HEADER.size, deadline, who, bound))
    if size != length * 8:
        raise WorkerError(
            f"{who} sent {size} bytes of metrics where {length * 8} were due (the ranks "
            "disagree on the metrics they evaluate)."
        )
    return np.frombuffer(_recv_exact(sock, size, deadline, who, bound), dtype=np.float64)


@dataclass
class _Pending:
    """A connection in its handshake: the nonce it was sent, what it answered so far."""

    nonce: bytes
    deadline: float
    answer: bytearray = field(default_factory=bytearray)


class StarAllreduce:
    """Sum-allreduce among ``world_size`` ranks through rank 0, which owns ``server`` (from
    ``open_hub``); every rank gets the same ``hub`` ticket. The timeouts default to the
    module's bounds (tests pass short ones)."""

    def __init__(
        self,
        rank: int,
        world_size: int,
        hub: HubTicket,
        server: socket.socket | None = None,
        *,
        peer_timeout_s: float = PEER_TIMEOUT_S,
        join_timeout_s: float = JOIN_TIMEOUT_S,
        handshake_timeout_s: float = HANDSHAKE_TIMEOUT_S,
    ) -> None:
        self.rank, self.world_size = rank, world_size
        self.peer_timeout_s = peer_timeout_s
        self.peers: dict[int, socket.socket] = {}  # rank -> socket (rank 0 for the others)
        if world_size == 1:
            if server is not None:
                server.close()
            return
        if rank == 0:
            if server is None:
                raise ValueError("rank 0 owns the hub socket (from open_hub)")
            try:
                self.peers = _admit(
                    server, hub.secret, world_size, join_timeout_s, handshake_timeout_s
                )
            finally:
                server.close()
            for peer in self.peers.values():
                peer.settimeout(peer_timeout_s)
        else:
            self.peers = {0: _join(hub, rank, join_timeout_s, handshake_timeout_s)}

    def sum(self, vector: np.ndarray) -> np.ndarray:
        vector = np.array(vector, dtype=np.float64).ravel()
        if self.world_size == 1:
            return vector
        if not self.peers:
            raise WorkerError("the metric channel is closed (an earlier round failed).")
        try:
            if self.rank == 0:
                bound = self.peer_timeout_s
                deadline = time.monotonic() + bound
                for rank in sorted(self.peers):
                    vector += _recv(self.peers[rank], vector.size, deadline, f"rank {rank}", bound)
                for rank, peer in self.peers.items():
                    _send(peer, vector, bound, f"rank {rank}")
                return vector
            # Rank 0 waits up to peer_timeout_s for every rank, then names the silent one:
            # wait twice that, so its error (and its closing the channel) comes first.
            bound = 2 * self.peer_timeout_s
            hub = self.peers[0]
            _send(hub, vector, bound, "rank 0 (the metric hub)")
            who = "rank 0 (the metric hub)"
            return _recv(hub, vector.size, time.monotonic() + bound, who, bound).copy()
        except BaseException:
            self.close()  # a failed round leaves the channel unusable: the peers fail now
            raise

    def close(self) -> None:
        for peer in self.peers.values():
            peer.close()
        self.peers = {}


def _admit(
    server: socket.socket,
    secret: bytes,
    world_size: int,
    join_timeout: float,
    handshake_timeout: float,
) -> dict[int, socket.socket]:
    """Rank 0: accept connections until ranks 1..world_size-1 have each passed the handshake.

    Handshakes run side by side (one selector); a connection that answers wrongly, claims a
    rank that joined already, or has not answered within ``handshake_timeout`` is closed."""
    admitted: dict[int, socket.socket] = {}
    pending: dict[socket.socket, _Pending] = {}
    deadline = time.monotonic() + join_timeout
    selector = selectors.DefaultSelector()
    server.setblocking(False)
    listening = False

    def drop(conn: socket.socket) -> None:
        selector.unregister(conn)
        pending.pop(conn)
        conn.close()

    try:
        while len(admitted) < world_size - 1:
            now = time.monotonic()
            if now >= deadline:
                missing = sorted(set(range(1, world_size)) - set(admitted))
                raise WorkerError(
                    f"rank{'s' if len(missing) > 1 else ''} {', '.join(map(str, missing))} "
                    f"did not join the metric hub within {join_timeout:g} s (did it fail to "
                    "start, or can it not reach rank 0's node?).",
                    missing=missing,
                )
            for conn in [c for c, p in pending.items() if p.deadline <= now]:
                drop(conn)  # a stranger, or a peer too slow to answer: it holds no slot
            if len(pending) < MAX_PENDING and not listening:
                selector.register(server, selectors.EVENT_READ)
                listening = True
            elif len(pending) >= MAX_PENDING and listening:
                selector.unregister(server)
                listening = False
            wake = min([deadline, *(p.deadline for p in pending.values())])
            for key, _ in selector.select(max(0.0, wake - now)):
                if key.fileobj is server:
                    _greet(server, selector, pending, handshake_timeout)
                    continue
                conn = cast(socket.socket, key.fileobj)  # only sockets are registered
                if conn not in pending:
                    continue
                rank = _answer(conn, pending[conn], secret, world_size, admitted, handshake_timeout)
                if rank is None:
                    continue  # more to read
                selector.unregister(conn)
                pending.pop(conn)
                if rank < 0:
                    conn.close()
                    continue
                admitted[rank] = conn
    except BaseException:
        for conn in admitted.values():
            conn.close()
        raise
    finally:
        for conn in pending:
            conn.close()
        selector.close()
    return admitted


def _greet(server, selector, pending, handshake_timeout: float) -> None:
    """Accept one connection and send it the hub's nonce."""
    try:
        conn, _ = server.accept()
    except (BlockingIOError, InterruptedError):
        return
    except OSError:
        return  # the connection went away before it was accepted
    nonce = os.urandom(_NONCE)
    try:
        conn.settimeout(handshake_timeout)
        conn.sendall(_MAGIC + nonce)  # a few bytes into an empty buffer: never blocks long
        conn.setblocking(False)
    except OSError:
        conn.close()
        return
    pending[conn] = _Pending(nonce, time.monotonic() + handshake_timeout)
    selector.register(conn, selectors.EVENT_READ)


def _answer(
    conn, state: _Pending, secret: bytes, world_size: int, admitted, handshake_timeout: float
) -> int | None:
    """Read a connection's answer: None until it is whole, then the rank it proved, or -1
    (refused: wrong or garbled answer, a rank out of range or already joined, a closed
    connection). On success the hub's own proof is sent and the socket is blocking again."""
    try:
        chunk = conn.recv(_ANSWER - len(state.answer))
    except (BlockingIOError, InterruptedError):
        return None
    except OSError:
        return -1
    if not chunk:
        return -1
    state.answer += chunk
    if state.answer[: len(_MAGIC)] != _MAGIC[: len(state.answer)]:
        return -1  # not our protocol: no need to wait for the rest
    if len(state.answer) < _ANSWER:
        return None
    answer = bytes(state.answer)
    magic, rest = answer[: len(_MAGIC)], answer[len(_MAGIC) :]
    (rank,) = _RANK.unpack(rest[: _RANK.size])
    peer_nonce = rest[_RANK.size : _RANK.size + _NONCE]
    proof = rest[_RANK.size + _NONCE :]
    if magic != _MAGIC or not 0 < rank < world_size:
        return -1
    if not hmac.compare_digest(proof, _mac(secret, b"rank", state.nonce, peer_nonce, rank)):
        return -1
    if rank in admitted:
        return -1  # the run's secret, but a rank that joined already
    try:
        conn.settimeout(handshake_timeout)
        conn.sendall(_mac(secret, b"hub", state.nonce, peer_nonce, rank))
    except OSError:
        return -1
    return rank


def _join(hub: HubTicket, rank: int, join_timeout: float, handshake_timeout: float):
    """Rank ``rank`` (> 0): connect to the hub, prove the run's secret, check the hub's."""
    where = f"the metric hub at {hub.host}:{hub.port}"
    try:
        sock = socket.create_connection((hub.host, hub.port), timeout=join_timeout)
    except OSError as exc:
        raise WorkerError(
            f"rank {rank} could not reach {where} ({type(exc).__name__}: {exc})."
        ) from None
    try:
        # The hub greets once rank 0 starts admitting: up to the join bound.
        hello = _recv_exact(sock, _HELLO, time.monotonic() + join_timeout, where, join_timeout)
        if hello[: len(_MAGIC)] != _MAGIC:
            raise WorkerError(f"{where} is not a shardtrain metric hub (rank {rank}).")
        hub_nonce, peer_nonce = hello[len(_MAGIC) :], os.urandom(_NONCE)
        proof = _mac(hub.secret, b"rank", hub_nonce, peer_nonce, rank)
        refused = WorkerError(
            f"{where} refused rank {rank} (not this run's hub, or rank {rank} joined already)."
        )
        try:
            sock.settimeout(handshake_timeout)
            sock.sendall(_MAGIC + _RANK.pack(rank) + peer_nonce + proof)
            deadline = time.monotonic() + handshake_timeout
            reply = _recv_exact(sock, _DIGEST, deadline, where, handshake_timeout)
        except (OSError, WorkerError):
            raise refused from None
        if not hmac.compare_digest(reply, _mac(hub.secret, b"hub", hub_nonce, peer_nonce, rank)):
            raise WorkerError(f"{where} is not this run's hub (its proof is wrong).")
    except BaseException:
        sock.close()
        raise
    return sock
