"""A minimal sum-allreduce over TCP for small vectors (per-round metric statistics).

LightGBM's network computes split histograms but not global evaluation metrics, so ranks
agree on metrics (and on early stopping) through this: rank 0 is a hub, the others connect
once, and each call sends one float64 vector up and gets the sum back. Every socket has a
timeout, so a dead peer fails the round instead of hanging it.
"""

from __future__ import annotations

import socket
import struct

import numpy as np

TIMEOUT_S = 600.0
_HEADER = struct.Struct("!Q")


def open_hub() -> tuple[socket.socket, int]:
    """Rank 0's listening socket on a free port (bound before the port is published)."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("0.0.0.0", 0))
    server.listen()
    return server, server.getsockname()[1]


def _send(sock: socket.socket, vector: np.ndarray) -> None:
    payload = np.ascontiguousarray(vector, dtype=np.float64).tobytes()
    sock.sendall(_HEADER.pack(len(payload)) + payload)


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    chunks, got = [], 0
    while got < size:
        chunk = sock.recv(size - got)
        if not chunk:
            raise ConnectionError("a peer closed the metric channel (did another rank fail?)")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _recv(sock: socket.socket) -> np.ndarray:
    (size,) = _HEADER.unpack(_recv_exact(sock, _HEADER.size))
    return np.frombuffer(_recv_exact(sock, size), dtype=np.float64)


class StarAllreduce:
    """Sum-allreduce among ``world_size`` ranks through rank 0."""

    def __init__(
        self, rank: int, world_size: int, hub: tuple[str, int], server: socket.socket | None = None
    ) -> None:
        self.rank, self.world_size = rank, world_size
        self.peers: list[socket.socket] = []
        if world_size == 1:
            return
        if rank == 0:
            assert server is not None, "rank 0 owns the hub socket"
            server.settimeout(TIMEOUT_S)
            for _ in range(world_size - 1):
                peer, _ = server.accept()
                peer.settimeout(TIMEOUT_S)
                self.peers.append(peer)
            server.close()
        else:
            peer = socket.create_connection(hub, timeout=TIMEOUT_S)
            self.peers.append(peer)

    def sum(self, vector: np.ndarray) -> np.ndarray:
        if self.world_size == 1:
            return np.asarray(vector, dtype=np.float64)
        if self.rank == 0:
            total = np.array(vector, dtype=np.float64)
            for peer in self.peers:
                total += _recv(peer)
            for peer in self.peers:
                _send(peer, total)
            return total
        _send(self.peers[0], vector)
        return _recv(self.peers[0]).copy()

    def close(self) -> None:
        for peer in self.peers:
            peer.close()
        self.peers = []
