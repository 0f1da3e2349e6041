"""A real Redis primary, one replica and three Sentinels on 127.0.0.1, for the failover tests."""

import subprocess
import time
from pathlib import Path
from types import TracebackType

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from service.devstack import free_port
from service.redis_server import redis_server_binary

PRIMARY_NAME = "glimpse"
# The Sentinels call the primary down after 1 s without an answer; two of three must agree.
DOWN_AFTER_MS = 1000
QUORUM = 2
START_TIMEOUT_S = 20.0


class SentinelGroup:
    """`redis-server` primary and replica (both with their append-only file) watched by three
    `redis-server --sentinel` processes; configs, data and logs in `root`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.primary_port = free_port()
        self.replica_port = free_port()
        self.sentinel_ports = [free_port() for _ in range(3)]
        self._processes: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        """The `redis+sentinel://` URL gateways and workers are given."""
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{PRIMARY_NAME}/0"

    def node(self, port: int) -> redis.Redis:
        """A client of one server that neither follows a failover nor retries a failed call."""
        return redis.Redis(
            port=port, socket_connect_timeout=1, socket_timeout=2, retry=Retry(NoBackoff(), 0)
        )

    def start(self) -> "SentinelGroup":
        data = ["appendonly yes", "appendfsync everysec", 'save ""']
        self._run("primary", self.primary_port, data)
        self._run("replica", self.replica_port, [*data, f"replicaof 127.0.0.1 {self.primary_port}"])
        for index, port in enumerate(self.sentinel_ports):
            self._run(
                f"sentinel-{index}",
                port,
                [
                    f"sentinel monitor {PRIMARY_NAME} 127.0.0.1 {self.primary_port} {QUORUM}",
                    f"sentinel down-after-milliseconds {PRIMARY_NAME} {DOWN_AFTER_MS}",
                    f"sentinel failover-timeout {PRIMARY_NAME} 10000",
                    f"sentinel parallel-syncs {PRIMARY_NAME} 1",
                ],
                sentinel=True,
            )
        self._wait_until_watched()
        return self

    def _run(self, name: str, port: int, lines: list[str], *, sentinel: bool = False) -> None:
        folder = self.root / name
        folder.mkdir(parents=True, exist_ok=True)
        config = folder / "redis.conf"  # a Sentinel rewrites its config: a file of its own
        config.write_text(
            "\n".join([f"port {port}", "bind 127.0.0.1", f'dir "{folder}"', *lines]) + "\n"
        )
        command = [redis_server_binary(), str(config), *(["--sentinel"] if sentinel else [])]
        with (folder / "server.log").open("ab") as log:
            self._processes[name] = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def _wait_until_watched(self) -> None:
        """Until the replica is in sync and every Sentinel knows it and the other two."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                if self._watched():
                    return
            except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError):
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"the Sentinel group did not form within {START_TIMEOUT_S:.0f} s")

    def _watched(self) -> bool:
        replication = self.node(self.replica_port).info("replication")
        if replication.get("master_link_status") != "up":
            return False
        for port in self.sentinel_ports:
            state = self.node(port).sentinel_master(PRIMARY_NAME)
            if int(state["num-slaves"]) < 1 or int(state["num-other-sentinels"]) < 2:
                return False
        return True

    def primary_address(self, sentinel_port: int) -> tuple[str, int] | None:
        """Where one Sentinel says the primary is now."""
        address = self.node(sentinel_port).sentinel_get_master_addr_by_name(PRIMARY_NAME)
        return (address[0].decode(), int(address[1])) if address else None

    def kill_primary(self) -> None:
        """SIGKILL the primary, as a crash of its host would: nothing is flushed or handed on."""
        process = self._processes.pop("primary")
        process.kill()
        process.wait()

    def wait_for_promotion(self, timeout_s: float = 30.0) -> None:
        """Until every Sentinel names the replica as the primary and it takes writes."""
        started = time.monotonic()
        while time.monotonic() - started < timeout_s:
            try:
                named = {self.primary_address(port) for port in self.sentinel_ports}
                role = self.node(self.replica_port).info("replication")["role"]
                if named == {("127.0.0.1", self.replica_port)} and role == "master":
                    return
            except (redis.ConnectionError, redis.TimeoutError):
                pass
            time.sleep(0.05)
        raise AssertionError(f"no Sentinel promoted the replica within {timeout_s:.0f} s")

    def stop(self) -> None:
        """Stop every server that still runs; safe to call twice."""
        for process in self._processes.values():
            process.terminate()
        for process in self._processes.values():
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._processes.clear()

    def __enter__(self) -> "SentinelGroup":
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
