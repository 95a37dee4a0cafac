"""Real servers on loopback for the tests: an HTTP forward proxy (CONNECT tunnels and absolute-form
requests, Basic auth), counting what it forwarded."""

from __future__ import annotations

import asyncio
import base64
import contextlib
from dataclasses import dataclass, field


@dataclass
class ForwardProxy:
    """An HTTP proxy on 127.0.0.1 requiring ``user``/``password`` (407 otherwise)."""

    user: str
    password: str
    port: int = 0
    tunnels: list[str] = field(default_factory=list)
    forwarded: list[str] = field(default_factory=list)
    refused_auth: int = 0
    _server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://{self.user}:{self.password}@127.0.0.1:{self.port}"

    async def start(self) -> ForwardProxy:
        from conftest import register_secret

        register_secret(self.user, self.password)
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, target, version = lines[0].split(" ", 2)
            headers = {
                k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:] if ":" in line)
            }
            expected = "Basic " + base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
            if headers.get("proxy-authorization") != expected:
                self.refused_auth += 1
                writer.write(b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n")
                await writer.drain()
                writer.close()
                return
            if method == "CONNECT":
                host, port = target.rsplit(":", 1)
                up_reader, up_writer = await asyncio.open_connection(host, int(port))
                self.tunnels.append(target)
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                await writer.drain()
                rest = b""
            else:
                rest_of_url = target.split("://", 1)[1]
                hostport, _, path = rest_of_url.partition("/")
                host, _, port = hostport.partition(":")
                up_reader, up_writer = await asyncio.open_connection(host, int(port or 80))
                self.forwarded.append(target)
                # One request per connection, so that each is seen (and counted) here.
                kept = [
                    line
                    for line in lines[1:]
                    if line and not line.lower().startswith(("proxy-", "connection:", "keep-alive:"))
                ]
                kept.append("Connection: close")
                rest = (f"{method} /{path} {version}\r\n" + "\r\n".join(kept) + "\r\n\r\n").encode("latin-1")
            up_writer.write(rest)
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        except Exception:
            writer.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except Exception:  # noqa: S110 - the other side went away
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()
