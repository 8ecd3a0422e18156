"""A TCP forwarder that tests can cut: a service "going away" without stopping it.

`TcpGate(host, port)` listens on a free local port and forwards every connection to
the service. `close()` drops every forwarded connection and refuses new ones (as a
stopped server does), `hang()` keeps them but passes nothing on (a hung server),
`open()` lets connections through again. The machine's real
PostgreSQL and Redis stay up for every other test meanwhile.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time


class TcpGate:
    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._open = True
        self._held = False
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._stopped = False
        threading.Thread(target=self._accept, daemon=True, name="tcpgate").start()

    def _accept(self) -> None:
        while not self._stopped:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if not self._open:
                client.close()
                continue
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                self._sockets |= {client, server}
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                while self._held and not self._stopped:  # hung: read, never passed on
                    time.sleep(0.02)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            with self._lock:
                self._sockets -= {source, sink}

    def close(self) -> None:
        """Refuse new connections and cut the open ones."""
        self._open = False
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def open(self) -> None:
        self._open = True
        self._held = False

    def hang(self) -> None:
        """Keep every connection open but pass nothing on: a service that hangs (a
        stopped process, a lost network) rather than one that refuses."""
        self._held = True

    def stop(self) -> None:
        self._stopped = True
        self.close()
        self._listener.close()
