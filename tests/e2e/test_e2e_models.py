"""End to end: `GET /v1/models` in front of an upstream that accepts and never answers.

Cursor checks keys with this call, and a load balancer checks `/health`. Neither the
model list nor anything else may wait on a hanging upstream for long: the list is
fetched on the event loop within about 2 s (one fetch for all callers), while `/health`,
key lookups and the admin API, which run on the database threads, answer at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx

from tests.support.harness import ADMIN_SECRET, Proxy
from tests.support.standin import SilentUpstream

#: The issue's bound for the list (about 2 s), with room for a loaded machine; the
#: blocking fetch it replaces took 5 to 10 s.
MODELS_WITHIN = 4.0
#: /health and the admin API must answer well under a second meanwhile.
OTHERS_WITHIN = 1.0


def timed(call: Callable[[], httpx.Response]) -> tuple[float, httpx.Response]:
    started = time.monotonic()
    response = call()
    return time.monotonic() - started, response


def test_hanging_upstream_stalls_neither_models_nor_health_nor_admin(
    make_proxy: Callable[..., Proxy], silent_upstream: SilentUpstream
) -> None:
    accepted = silent_upstream.accepted
    proxy = make_proxy(silent_upstream.url)
    # The startup checks (endpoint probe, model check) have given up by now; count after.
    startup = len(accepted)
    key = proxy.create_key("cursor")
    auth = {"authorization": f"Bearer {key}"}
    admin = {"x-admin-secret": ADMIN_SECRET}

    def models() -> httpx.Response:
        return httpx.get(f"{proxy.url}/v1/models", headers=auth, timeout=30)

    def health() -> httpx.Response:
        return httpx.get(f"{proxy.url}/health", timeout=30)

    def create_key(number: int) -> Callable[[], httpx.Response]:
        return lambda: httpx.post(
            f"{proxy.url}/admin/create-key", headers=admin, json={"name": f"n{number}"}, timeout=30
        )

    with ThreadPoolExecutor(8) as pool:
        listings = [pool.submit(timed, models) for _ in range(8)]
        time.sleep(0.3)  # the eight are waiting on the upstream now
        others = []
        for number in range(3):
            others.append(timed(health))
            others.append(timed(create_key(number)))
            time.sleep(0.1)
        results = [future.result() for future in listings]

    models_seconds = sorted(seconds for seconds, _ in results)
    other_seconds = sorted(seconds for seconds, _ in others)
    print(f"8 x GET /v1/models: {[round(s, 2) for s in models_seconds]} s")
    print(f"/health and /admin/create-key meanwhile: {[round(s, 3) for s in other_seconds]} s")
    for _, response in results:
        assert response.status_code == 200
        assert [m["id"] for m in response.json()["data"]] == ["cursor-pro-sonnet"]
    assert [r.status_code for _, r in others] == [200, 201] * 3
    assert models_seconds[-1] < MODELS_WITHIN
    assert other_seconds[-1] < OTHERS_WITHIN
    # One shared fetch, not one per caller.
    assert len(accepted) == startup + 1
    # The failure is remembered: the next check answers at once, without a new attempt.
    seconds, response = timed(models)
    assert response.status_code == 200 and seconds < OTHERS_WITHIN
    assert len(accepted) == startup + 1
    assert "listing the proxy's own models only" in proxy.log()
