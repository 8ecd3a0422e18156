"""Soak: concurrent SSE streams and plain requests through a real proxy while keys are
created and revoked, then checks that nothing was lost, cut or mixed up.

    python -m bench.soak [--streams 200] [--plain 2000] [--connections 16]   (make soak)

tests/e2e/test_soak.py runs a short version in `make test`. It checks:
- every request succeeded (no error that was not caused on purpose);
- every stream arrived whole and in order, with only its own chunks (the stand-in
  names each chunk after its request's x-request-id);
- per-key usage in the database equals what the clients received;
- the proxy's open file descriptors and memory return to their baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.support.harness import ADMIN_SECRET, Proxy, start_proxy
from tests.support.standin import StandIn

ADMIN = {"x-admin-secret": ADMIN_SECRET}
LOAD_KEYS = 8
CHUNKS = 20


@dataclass
class Report:
    streams_ok: int = 0
    plain_ok: int = 0
    keys_churned: int = 0
    errors: list[str] = field(default_factory=list)
    served: dict[int, int] = field(default_factory=dict)
    counted: dict[int, int] = field(default_factory=dict)
    fds: tuple[int, int] = (0, 0)
    rss_kb: tuple[int, int] = (0, 0)
    seconds: float = 0.0

    def problems(self) -> list[str]:
        found = list(self.errors[:10])
        if self.served != self.counted:
            found.append(f"usage counted {self.counted} != served {self.served}")
        if self.fds[1] > self.fds[0] + 4:
            found.append(f"open fds grew from {self.fds[0]} to {self.fds[1]}")
        return found


def proc_status(pid: int) -> tuple[int, int]:
    """(open file descriptors, resident memory in kB) of a process."""
    fds = len(list(Path(f"/proc/{pid}/fd").iterdir()))
    rss = next(
        int(line.split()[1])
        for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        if line.startswith("VmRSS:")
    )
    return fds, rss


async def stream_once(client: httpx.AsyncClient, key: str, rid: str, report: Report) -> bool:
    headers = {
        "authorization": f"Bearer {key}",
        "x-request-id": rid,
        "x-standin-chunks": str(CHUNKS),
        "x-standin-interval": "0.05",
    }
    body = {"model": "cursor-pro-sonnet", "stream": True, "messages": []}
    seen: list[str] = []
    done = False
    async with client.stream("POST", "/v1/chat/completions", headers=headers, json=body) as r:
        if r.status_code != 200:
            report.errors.append(f"stream {rid}: status {r.status_code}")
            return False
        async for line in r.aiter_lines():
            done = done or line == "data: [DONE]"
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if chunk["id"] != rid:
                report.errors.append(f"stream {rid}: got a chunk of {chunk['id']}")
                return False
            if chunk["choices"] and (text := chunk["choices"][0]["delta"].get("content")):
                seen.append(text.split("@")[0])
    if seen != [str(i) for i in range(CHUNKS)] or not done:
        report.errors.append(f"stream {rid}: cut or out of order: {seen[:5]}...")
        return False
    return True


async def plain_once(client: httpx.AsyncClient, key: str, report: Report) -> bool:
    response = await client.post(
        "/v1/chat/completions",
        headers={"authorization": f"Bearer {key}"},
        json={"model": "gemini-3-flash", "messages": [{"role": "user", "content": "x"}]},
    )
    if response.status_code != 200 or response.json()["model"] != "gemini-3-flash":
        report.errors.append(f"plain: status {response.status_code}")
        return False
    return True


async def churn_keys(proxy: Proxy, stop: asyncio.Event, report: Report) -> None:
    """Create and revoke keys through the admin API for as long as the load runs."""
    async with httpx.AsyncClient(base_url=proxy.url, headers=ADMIN) as admin:
        while not stop.is_set():
            created = await admin.post("/admin/create-key", json={"name": "churn"})
            revoked = await admin.post("/admin/revoke-key", json={"id": created.json()["id"]})
            if (created.status_code, revoked.status_code) != (201, 200):
                report.errors.append(f"churn: {created.status_code} {revoked.status_code}")
            report.keys_churned += 1
            await asyncio.sleep(0.02)


async def run(proxy: Proxy, streams: int, plain: int, connections: int) -> Report:
    report = Report()
    async with httpx.AsyncClient(base_url=proxy.url, headers=ADMIN) as admin:
        created = [
            (await admin.post("/admin/create-key", json={"name": f"load{i}"})).json()
            for i in range(LOAD_KEYS)
        ]
    keys = [(c["id"], c["api_key"]) for c in created]
    report.served = {key_id: 0 for key_id, _ in keys}
    pid = proxy.process.pid
    # Warm up with concurrency, so the baseline includes every DB worker's connection
    # (key lookups are mostly served from memory; admin calls always use a worker).
    warm_keys = keys * 8
    async with httpx.AsyncClient(base_url=proxy.url, timeout=60) as warm:
        await asyncio.gather(*(warm.get("/admin/keys", headers=ADMIN) for _ in range(32)))
        for _ in range(3):
            warmed = await asyncio.gather(*(plain_once(warm, key, report) for _, key in warm_keys))
            for (key_id, _), ok in zip(warm_keys, warmed, strict=True):
                report.served[key_id] += ok
    await asyncio.sleep(0.5)
    fds_before, rss_before = proc_status(pid)

    started = time.monotonic()
    stop = asyncio.Event()
    churn = asyncio.create_task(churn_keys(proxy, stop, report))
    stream_limits = httpx.Limits(max_connections=streams)
    plain_limits = httpx.Limits(max_connections=connections)
    async with (
        httpx.AsyncClient(base_url=proxy.url, timeout=120, limits=stream_limits) as sc,
        httpx.AsyncClient(base_url=proxy.url, timeout=120, limits=plain_limits) as pc,
    ):
        cycle = itertools.cycle(keys)
        jobs = [
            (key_id, stream_once(sc, key, f"soak-{i}", report))
            for i, (key_id, key) in zip(range(streams), cycle, strict=False)
        ]
        jobs += [
            (key_id, plain_once(pc, key, report))
            for _, (key_id, key) in zip(range(plain), cycle, strict=False)
        ]
        results = await asyncio.gather(*(job for _, job in jobs), return_exceptions=True)
    stop.set()
    await churn
    report.seconds = time.monotonic() - started
    for (key_id, _), (index, ok) in zip(jobs, enumerate(results), strict=True):
        if isinstance(ok, BaseException):
            report.errors.append(f"request {index}: {ok!r}")
            ok = False
        report.served[key_id] += bool(ok)
        if index < streams:
            report.streams_ok += bool(ok)
        else:
            report.plain_ok += bool(ok)

    await asyncio.sleep(1.6)  # usage is flushed about once a second
    async with httpx.AsyncClient(base_url=proxy.url, headers=ADMIN) as admin:
        rows = (await admin.get("/admin/usage")).json()["data"]
    report.counted = {key_id: 0 for key_id, _ in keys}
    for row in rows:
        if row["key_id"] in report.counted:
            report.counted[row["key_id"]] += row["requests"]
    await asyncio.sleep(0.5)
    fds_after, rss_after = proc_status(pid)
    report.fds, report.rss_kb = (fds_before, fds_after), (rss_before, rss_after)
    return report


def soak(workdir: Path, streams: int, plain: int, connections: int) -> Report:
    upstream = StandIn().start()
    proxy = start_proxy(workdir, upstream.url)
    try:
        return asyncio.run(run(proxy, streams, plain, connections))
    finally:
        proxy.stop()
        upstream.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--plain", type=int, default=2000)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        report = soak(Path(tmp), args.streams, args.plain, args.connections)
    print(
        f"{args.streams} streams of {CHUNKS} chunks + {args.plain} plain requests "
        f"in {report.seconds:.1f}s, {report.keys_churned} keys created and revoked meanwhile"
    )
    print(f"ok: {report.streams_ok} streams, {report.plain_ok} plain")
    total = sum(report.served.values())
    print(f"usage counted == served: {report.counted == report.served} ({total} requests)")
    print(
        f"open fds {report.fds[0]} -> {report.fds[1]}, "
        f"RSS {report.rss_kb[0] // 1024} -> {report.rss_kb[1] // 1024} MB"
    )
    for problem in report.problems():
        print(f"PROBLEM: {problem}")
    return 1 if report.problems() else 0


if __name__ == "__main__":
    sys.exit(main())
