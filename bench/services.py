"""The processes a bench run measures, started with the tests' process harness.

`tests/support/harness.py` is the one place that knows how a proxy is started, waited for and
stopped (`free_port`, `proxy_env`, `spawn`, `wait_ready`, `stop_process`); the bench
adds what it measures a process by: CPU time, context switches and RSS from /proc.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.support.harness import (
    SERVE,
    StartError,
    free_port,
    healthy,
    proxy_env,
    spawn,
    stop_process,
    wait_ready,
)

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"

CHAT_PATH = "/v1/chat/completions"
#: Served by apipod itself (translated to Chat Completions, and on to Messages).
RESPONSES_PATH = "/v1/responses"
#: A plain model: apipod parses the body and passes it on unchanged. The
#: cursor-pro-sonnet alias costs the same plus one random draw and a re-serialised body;
#: try `--model cursor-pro-sonnet` to see it.
DEFAULT_MODEL = "gemini-3-flash"


class BenchError(RuntimeError):
    """The run cannot go on (a service did not start, a tool is missing)."""


@dataclass
class Service:
    """A process the bench started: its URL and the /proc readings used to cost it."""

    name: str
    process: subprocess.Popen[bytes]
    url: str
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def cpu_seconds(self) -> float:
        """utime + stime of the whole process (all threads), from /proc/PID/stat."""
        return stat_cpu_seconds(Path(f"/proc/{self.pid}/stat"))

    def main_thread(self) -> tuple[float, int]:
        """The main thread's CPU seconds, and context switches summed over all threads.

        mitmproxy's event loop runs on the main thread, so its share is what limits
        throughput; the rest is apipod's database pool. Context switches count thread
        hand-offs (a pool lookup wakes a worker and then the loop again).
        """
        main = stat_cpu_seconds(Path(f"/proc/{self.pid}/task/{self.pid}/stat"))
        switches = 0
        for task in Path(f"/proc/{self.pid}/task").iterdir():
            with contextlib.suppress(OSError):  # a thread may end meanwhile
                for line in (task / "status").read_text().splitlines():
                    if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                        switches += int(line.split()[1])
        return main, switches

    def rss_mb(self) -> float:
        """VmRSS from /proc/PID/status, in MiB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise BenchError(f"{self.name}: no VmRSS in /proc/{self.pid}/status")

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise BenchError(
                f"{self.name} exited with {self.process.returncode}:\n{tail(self.log)}"
            )

    def wait_ready(self, ready: Callable[[], bool]) -> None:
        """Wait until `ready()` is true; BenchError if the process fails to start."""
        try:
            wait_ready(self.process, ready, lambda: tail(self.log))
        except StartError as exc:
            raise BenchError(f"{self.name} {exc}") from None

    def stop(self) -> None:
        stop_process(self.process)


def stat_cpu_seconds(stat: Path) -> float:
    """utime + stime from a /proc stat file, in seconds (SC_CLK_TCK ticks)."""
    # Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    fields = stat.read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def start_upstream(workdir: Path) -> Service:
    """bench/upstream.py prints `listening URL` once it accepts connections."""
    log = workdir / "upstream.log"
    with open(log, "wb") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "bench.upstream"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=err,
        )
    assert process.stdout is not None
    line = process.stdout.readline().decode().strip()
    if not line.startswith("listening "):
        stop_process(process)
        raise BenchError(f"upstream did not start:\n{tail(log)}")
    return Service("upstream", process, line.removeprefix("listening "), log)


def start_apipod(
    workdir: Path,
    upstream_url: str,
    admin_secret: str,
    name: str = "apipod",
    database: Path | None = None,
    **overrides: str | None,
) -> Service:
    """Start apipod exactly as `make run` does, in its own folder (so no `.env` applies).

    Replicas share one `database` (bench/replicas.py); by default each has its own.
    The access log (one line per request) goes to a file, as it would to a container's.
    UPSTREAM_API is set, not probed: `both` (the default) forwards chat completions as
    they come, `UPSTREAM_API="anthropic"` translates them to the upstream's `/v1/messages`.
    """
    home = workdir / name
    home.mkdir()
    port = free_port()
    env = proxy_env(
        upstream_url,
        port,
        database or home / "data" / "proxy.db",
        admin_secret,
        **{"UPSTREAM_API": "both", **overrides},
    )
    log = home / "proxy.log"
    service = Service(name, spawn(SERVE, home, log, env), f"http://127.0.0.1:{port}", log)
    service.wait_ready(healthy(service.url))
    return service


def start_bare(workdir: Path, upstream_url: str) -> Service:
    """Bare mitmdump: the same version and mode, no addon."""
    home = workdir / "bare"
    home.mkdir()
    port = free_port()
    mitmdump = Path(sys.executable).with_name("mitmdump")
    command = [str(mitmdump), "-q", "--mode", f"reverse:{upstream_url}"]
    command += ["--listen-port", str(port)]
    log = home / "mitmdump.log"
    service = Service("bare", spawn(command, home, log), f"http://127.0.0.1:{port}", log)
    body = {"model": DEFAULT_MODEL, "messages": []}
    service.wait_ready(
        lambda: httpx.post(service.url + CHAT_PATH, json=body, timeout=2).status_code == 200
    )
    return service


def create_key(apipod: Service, admin_secret: str) -> str:
    """A customer key through the admin API, as an operator would create one.

    The key gets the highest per-key limit (`rpm` 1,000,000) rather than none, so the
    rate limiter still runs its whole check on every request but never refuses one: the
    bench measures the limiter's cost, not its 429s. Versions without per-key limits
    refuse the field; then the key is created without it.
    """
    url = f"{apipod.url}/admin/create-key"
    headers = {"x-admin-secret": admin_secret}
    response = httpx.post(url, headers=headers, json={"name": "bench", "rpm": 1_000_000})
    if response.status_code == 400:
        response = httpx.post(url, headers=headers, json={"name": "bench"})
    if response.status_code != 201:
        raise BenchError(f"creating a key failed: {response.status_code} {response.text}")
    return str(response.json()["api_key"])


@contextlib.contextmanager
def services(
    workdir: Path, admin_secret: str, **apipod_env: str | None
) -> Iterator[tuple[Service, Service, Service, Service]]:
    """Start upstream, apipod (with `apipod_env` in its environment), bare mitmdump and a
    translating apipod (the same environment); always stop them again.

    The translating apipod (`UPSTREAM_API=anthropic`) shares apipod's database, so one
    key serves both; it turns chat completions into the upstream's Anthropic Messages
    stream and back, which the `translated` stream row measures against passthrough, and
    serves the `responses` row's /v1/responses streams (Responses -> Chat -> Messages,
    and the events back the same way: the whole translation chain).
    """
    started: list[Service] = []
    try:
        upstream = start_upstream(workdir)
        started.append(upstream)
        # One after the other: on a first run both mitmdumps would create ~/.mitmproxy.
        apipod = start_apipod(workdir, upstream.url, admin_secret, **apipod_env)
        started.append(apipod)
        bare = start_bare(workdir, upstream.url)
        started.append(bare)
        translated = start_apipod(
            workdir,
            upstream.url,
            admin_secret,
            "translated",
            database=workdir / "apipod" / "data" / "proxy.db",
            **{**apipod_env, "UPSTREAM_API": "anthropic"},
        )
        started.append(translated)
        yield upstream, apipod, bare, translated
    finally:
        for service in reversed(started):
            service.stop()
