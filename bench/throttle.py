"""What a per API key rate limit costs a cached get by id, in process.

    .venv/bin/python bench/throttle.py [--repeat 2000]

Times GET /memory/memories/{id} through Django's test client (the whole
request: middleware, the key's check, the throttle, the cached read, the
rendering) with THROTTLE_RATE unset, with a rate counted on the read's first
Redis round trip (memories.api.throttling, as served), and with a rate counted
on a round trip of its own (what a throttle that does not ride would cost).
The rate is far above what the loop sends: every request is allowed. The
three are interleaved in rounds of 200, so that a busy moment of the machine
weighs on all of them alike. Uses DATABASE_URL / REDIS_URL, or the embedded
stack; the throwaway account is deleted at the end.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterator
from contextlib import contextmanager
from unittest import mock

from django.conf import settings
from django.test import override_settings
from support import APIClient, arguments, bench_account, timings

from memories.api import throttling

ROUND = 200
RATE = "1000000000/min"


@contextmanager
def _rate(value: str | None, *, ride: bool) -> Iterator[None]:
    rest_framework = {**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": {"api_key": value}}
    with override_settings(REST_FRAMEWORK=rest_framework):
        if ride:
            yield
        else:
            with mock.patch.object(throttling, "ride_counter", return_value=None):
                yield


# name: (THROTTLE_RATE, whether the count rides on the read's round trip)
VARIANTS = {
    "no rate": (None, True),
    "rate, riding the read's round trip": (RATE, True),
    "rate, a round trip of its own": (RATE, False),
}


def main() -> None:
    args = arguments(__doc__)
    samples: dict[str, list[float]] = {name: [] for name in VARIANTS}
    with bench_account() as (_, client):
        created = client.post(
            "/memory/memories", {"user_id": "u1", "content": "The user likes green tea"}, format="json"
        )
        assert created.status_code == 201, created.content[:300]
        path = f"/memory/memories/{created.json()['id']}"

        def get(_: int, client: APIClient = client) -> None:
            response = client.get(path)
            assert response.status_code == 200, response.status_code

        for value, ride in VARIANTS.values():  # warm: the key's last use written, key and memory cached
            with _rate(value, ride=ride):
                timings(ROUND, get)
        for _ in range(max(1, args.repeat // ROUND)):
            for name, (value, ride) in VARIANTS.items():
                with _rate(value, ride=ride):
                    samples[name] += timings(ROUND, get)
    baseline = statistics.median(samples["no rate"])
    print(f"GET /memory/memories/{{id}}, cached, {len(samples['no rate'])} requests each, median ms:")
    for name, values in samples.items():
        median = statistics.median(values)
        print(f"  {name:38} {median:.4f}  ({(median - baseline) * 1000:+.1f} us)")


if __name__ == "__main__":
    main()
