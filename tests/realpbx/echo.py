"""An AudioSocket peer that writes back every audio frame as soon as it has read it: through
Asterisk's ``echo-`` extension the caller hears itself after Asterisk's own path and the
recordings' alignment, nothing else (the yardstick for ``bench/bench_pbx.py``'s figures)."""

from __future__ import annotations

import socket
import struct
import threading

KIND_HANGUP = 0x00
KIND_AUDIO = 0x10


class AudioSocketEcho:
    def __init__(self, port: int) -> None:
        self._server = socket.create_server(("127.0.0.1", port))
        self._server.settimeout(0.2)
        self._stop = threading.Event()
        self.frames_echoed = 0
        self._thread = threading.Thread(target=self._accept, name="audiosocket-echo", daemon=True)

    def __enter__(self) -> AudioSocketEcho:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._server.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._server.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    def _echo(self, conn: socket.socket) -> None:
        buffer = b""
        with conn:
            conn.settimeout(1.0)
            while not self._stop.is_set():
                try:
                    data = conn.recv(4096)
                except TimeoutError:
                    continue
                if not data:
                    return
                buffer += data
                while len(buffer) >= 3:
                    kind = buffer[0]
                    (length,) = struct.unpack(">H", buffer[1:3])
                    if len(buffer) < 3 + length:
                        break
                    frame, buffer = buffer[: 3 + length], buffer[3 + length :]
                    if kind == KIND_HANGUP:
                        return
                    if kind == KIND_AUDIO:
                        conn.sendall(frame)
                        self.frames_echoed += 1
