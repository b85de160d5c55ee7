"""Sequence numbers increase per network, and survive a restart of the embedded allocator."""

import pytest

from networks import sequence
from networks.models import Network


@pytest.mark.django_db
def test_embedded_allocator_is_per_network_and_monotonic_across_restarts(network, other_network):
    first = [sequence.next_sequence(network.id) for _ in range(3)]
    other = sequence.next_sequence(other_network.id)
    assert first == [first[0], first[0] + 1, first[0] + 2]
    assert other == 1
    sequence.reset_local_allocator()  # as if the process restarted
    after_restart = sequence.next_sequence(network.id)
    assert after_restart > first[-1]
    # One database write per block, not per message.
    assert Network.objects.get(pk=network.pk).seq_reserved == 2 * sequence.BLOCK_SIZE


@pytest.mark.django_db
def test_allocator_crosses_block_boundaries(network, monkeypatch):
    monkeypatch.setattr(sequence, "BLOCK_SIZE", 2)
    assert [sequence.next_sequence(network.id) for _ in range(5)] == [1, 2, 3, 4, 5]


@pytest.mark.django_db
def test_a_graceful_stop_gives_the_rest_of_the_block_back(network, other_network):
    last = [sequence.next_sequence(network.id) for _ in range(5)][-1]
    assert sequence.local_allocator.release() == 1
    # The next start continues where this one stopped: no false gap for resuming listeners.
    assert sequence.next_sequence(network.id) == last + 1
    assert sequence.next_sequence(other_network.id) == 1
