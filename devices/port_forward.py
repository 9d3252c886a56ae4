"""PortForward: a loopback port on this machine that reaches a port on the device (``ssh -L``).

Used to reach services a campaign starts on the device, such as TVM's RPC server for
tuning, without opening any port on the device's network. Each accepted connection gets
its own SSH channel; two threads copy bytes until either side closes.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable


class PortForward:
    """Listens on ``127.0.0.1:port``; ``open_channel(peer)`` gives a socket-like SSH channel."""

    def __init__(self, open_channel: Callable[[tuple[str, int]], object]) -> None:
        self._open_channel = open_channel
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._links: list[tuple[socket.socket, object]] = []
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True, name=f"forward-{self.port}").start()

    def _accept(self) -> None:
        while True:
            try:
                conn, peer = self._listener.accept()
            except OSError:
                return  # closed
            try:
                channel = self._open_channel(peer)
            except Exception:  # the device refused or the link is gone: drop this connection only
                conn.close()
                continue
            with self._lock:
                if self._closed:
                    conn.close()
                    channel.close()
                    return
                self._links.append((conn, channel))
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for src, dst in ((conn.recv, channel.sendall), (channel.recv, conn.sendall)):
                threading.Thread(target=self._copy, args=(src, dst, conn, channel), daemon=True).start()

    @staticmethod
    def _copy(recv, send, conn: socket.socket, channel) -> None:
        try:
            while data := recv(65536):
                send(data)
        except (OSError, EOFError):
            pass
        finally:  # one side closed: close both, which also ends the other direction's thread
            conn.close()
            channel.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            links, self._links = self._links, []
        try:
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
        except OSError:
            pass
        self._listener.close()
        for conn, channel in links:
            conn.close()
            channel.close()

    def __enter__(self) -> PortForward:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
