"""Transcript ingestion: store_raw latency, and the processor's throughput.

    .venv/bin/python bench/ingest.py [--transcripts 200]

Stores --transcripts chat transcripts (the hand-written samples of
tests/data/transcripts, round robin, each its own session) through
`POST /api/memory/{vectorstore}/store_raw`, then processes the queue in this
process (memories.ingest.process_queued: claim, rule extraction, embedding,
deduplicated writes, session summary). Prints store_raw's latency, the
processing rate, and how estimated_processing_time compared with the real
wait. The baseline is the spec's answer: a constant "2-5 minutes". Uses a
throwaway account, deleted after.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from support import bench_account

from memories.ingest import process_queued
from memories.models import Memory, RawTranscript, TranscriptStatus

SAMPLES = sorted((Path(__file__).resolve().parent.parent / "tests" / "data" / "transcripts").glob("*.json"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--transcripts", type=int, default=200)
    count = parser.parse_args().transcripts
    samples = [json.loads(path.read_text())["session_data"] for path in SAMPLES]
    with bench_account() as (account, client):
        namespace = f"bench{time.time_ns()}"
        latencies, estimates = [], []
        for index in range(count):
            body = {
                "session_data": samples[index % len(samples)],
                "session_id": f"s{index}",
                "metadata": {"user_id": f"user{index % 20}"},
            }
            started = time.perf_counter()
            response = client.post(f"/api/memory/{namespace}/store_raw", body, format="json")
            latencies.append((time.perf_counter() - started) * 1000)
            assert response.status_code == 202, response.content[:300]
            estimates.append((response.json()["estimated_processing_time"], response.json()["estimate_basis"]))
        started = time.perf_counter()
        result = process_queued(limit=count * 2)
        elapsed = time.perf_counter() - started
        processed = RawTranscript.objects.filter(account=account, status=TranscriptStatus.PROCESSED).count()
        memories = Memory.objects.filter(account=account).count()
        # What a transcript stored now would be told, with the measured throughput.
        probe = client.post(
            f"/api/memory/{namespace}/store_raw",
            {"session_data": samples[0], "metadata": {"user_id": "probe"}},
            format="json",
        ).json()
    latencies.sort()
    print(
        f"store_raw: {count} transcripts, p50 {statistics.median(latencies):.1f} ms, "
        f"p95 {latencies[int(len(latencies) * 0.95) - 1]:.1f} ms"
    )
    print(
        f"processing: {processed}/{count} processed in {elapsed:.1f} s = {processed / elapsed:.1f} transcripts/s, "
        f"{memories} memories ({result.memories_created} discrete created), {result.failed} failed"
    )
    last_estimate, basis = estimates[-1]
    print(
        f"estimate for the last of the burst (position {count - 1}, basis {basis}): {last_estimate:.1f} s; "
        f"real wait for it: {elapsed:.1f} s"
    )
    print(
        f"estimate after measuring (position {probe['queue_position']}, basis {probe['estimate_basis']}): "
        f"{probe['estimated_processing_time']:.3f} s per transcript; baseline (spec): a constant '2-5 minutes'"
    )


if __name__ == "__main__":
    main()
