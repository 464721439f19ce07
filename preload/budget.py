"""The byte budget of a preload run: never more than it in Redis, the least valuable out first.

The run offers each user's entries, best first; the budget admits what fits
and, to make room for a better entry, gives back the worst entries admitted
so far (the caller deletes them from Redis). It keeps one small tuple per
admitted entry, so its memory is bounded by the budget itself.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

# (score, size in bytes, key, memories it holds: 1 for a memory's entry, 0
# for a list page): plain tuples, compared in C (a million of them a big run).
# Keys are unique, so the last field never decides an order.
Entry = tuple[float, int, str, int]


class Budget:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.total = 0
        # Memories held by the admitted entries.
        self.count = 0
        self._admitted: list[Entry] = []  # a min-heap: the least valuable on top

    def admit(self, entries: Sequence[Entry]) -> tuple[list[str], list[str]]:
        """(the keys of the entries to write, the keys written before to delete) to stay within the budget."""
        admitted: list[str] = []
        evicted: list[str] = []
        for entry in sorted(entries, reverse=True):
            score, size, key, memories = entry
            while self.total + size > self.max_bytes and self._admitted and self._admitted[0][0] < score:
                victim = heapq.heappop(self._admitted)
                self.total -= victim[1]
                self.count -= victim[3]
                evicted.append(victim[2])
            if self.total + size <= self.max_bytes:
                heapq.heappush(self._admitted, entry)
                self.total += size
                self.count += memories
                admitted.append(key)
        return admitted, evicted
