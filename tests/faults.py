"""Fault injection for tests: a TCP proxy in front of a real redis-server that loses replies.

`ReplyLoser` forwards every byte both ways. Armed with a pattern, it lets the next command
containing that pattern reach Redis and run there, waits for Redis's reply (proof that it
ran), and then cuts the connection instead of passing the reply on: the client sees a
dropped connection for a command that did take effect, as when Redis dies between its write
and its reply, or a network drops a reply. redis-py then reconnects (through the proxy again)
and, by default, sends the command again.
"""

from __future__ import annotations

import socket
import threading
from contextlib import suppress

from triage.admin.redis_server import free_port


class ReplyLoser:
    """A proxy to `127.0.0.1:target_port` on a port of its own (`port`)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.lock = threading.Lock()
        self.pattern = b""
        self.to_lose = 0
        self.lost = 0  # replies lost so far
        self.listener = socket.create_server(("127.0.0.1", self.port))
        self.closed = False
        threading.Thread(target=self._accept, daemon=True, name="reply-loser").start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def lose_replies(self, pattern: bytes, times: int) -> None:
        """Lose the replies of the next `times` commands that contain `pattern`."""
        with self.lock:
            self.pattern, self.to_lose = pattern, times

    def close(self) -> None:
        self.closed = True
        self.listener.close()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target_port))
            doomed = threading.Event()
            threading.Thread(target=self._upstream, args=(client, server, doomed), daemon=True).start()
            threading.Thread(target=self._downstream, args=(server, client, doomed), daemon=True).start()

    def _upstream(self, client: socket.socket, server: socket.socket, doomed: threading.Event) -> None:
        """Client to Redis: mark the connection when a command to lose goes through."""
        with suppress(OSError):
            while data := client.recv(65536):
                with self.lock:
                    if self.to_lose and self.pattern and self.pattern in data:
                        self.to_lose -= 1
                        doomed.set()
                server.sendall(data)
        _close(client, server)

    def _downstream(self, server: socket.socket, client: socket.socket, doomed: threading.Event) -> None:
        """Redis to client: a reply on a marked connection is dropped with the connection."""
        with suppress(OSError):
            while data := server.recv(65536):
                if doomed.is_set():
                    with self.lock:
                        self.lost += 1
                    break
                client.sendall(data)
        _close(client, server)


def _close(*sockets: socket.socket) -> None:
    for sock in sockets:
        with suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        with suppress(OSError):
            sock.close()
