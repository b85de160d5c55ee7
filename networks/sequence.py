"""The embedded mode's per-network sequence numbers: increasing, no write per message.

With Redis, one ``INCR`` inside the publish accounting script (``networks.accounting``)
serves every server process. Without it, a single process hands numbers out of blocks
reserved in the database, one write per block. A graceful stop gives the unused rest of the
blocks back; a crash skips it, so numbers stay increasing (a gap is possible).
"""

from __future__ import annotations

import threading

from django.db import transaction
from django.db.models import F

from .models import Network

BLOCK_SIZE = 1000


class _BlockAllocator:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._next: dict[int, int] = {}
        self._limit: dict[int, int] = {}

    def next(self, network_id: int) -> int:
        with self._lock:
            value = self._next.get(network_id, 0)
            if value == 0 or value > self._limit[network_id]:
                value, self._limit[network_id] = self._reserve(network_id)
            self._next[network_id] = value + 1
            return value

    def next_without_reserving(self, network_id: int) -> int | None:
        """The next number if the current block has one; None when the database is needed."""
        with self._lock:
            value = self._next.get(network_id, 0)
            if value == 0 or value > self._limit[network_id]:
                return None
            self._next[network_id] = value + 1
            return value

    @staticmethod
    def _reserve(network_id: int) -> tuple[int, int]:
        with transaction.atomic():
            Network.objects.filter(pk=network_id).update(
                seq_reserved=F("seq_reserved") + BLOCK_SIZE
            )
            limit = Network.objects.values_list("seq_reserved", flat=True).get(pk=network_id)
        return limit - BLOCK_SIZE + 1, limit

    def release(self) -> int:
        """Give the unused rest of every block back (a graceful shutdown), so the next start
        continues without a gap; returns how many networks were released."""
        with self._lock:
            used = {n: value - 1 for n, value in self._next.items() if value}
            for network_id, last in used.items():
                # Only if no one reserved past this block meanwhile.
                Network.objects.filter(pk=network_id, seq_reserved=self._limit[network_id]).update(
                    seq_reserved=last
                )
            self._next.clear()
            self._limit.clear()
        return len(used)

    def reset(self) -> None:
        with self._lock:
            self._next.clear()
            self._limit.clear()


local_allocator = _BlockAllocator()


def next_sequence(network_id: int) -> int:
    """The next sequence number of a network (embedded mode)."""
    return local_allocator.next(network_id)


def reset_local_allocator() -> None:
    """Forget reserved blocks (tests: the database they came from was rolled back)."""
    local_allocator.reset()
