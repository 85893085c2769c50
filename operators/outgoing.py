"""What an operator hands to the job's sink: a record for one topic, with its key."""

from __future__ import annotations

from typing import NamedTuple

from schemas import DeadLetter


class Outgoing(NamedTuple):
    """One output record: the topic, the Kafka key, the encoded payload."""

    topic: str
    key: str | None
    payload: bytes


def dead_letter_out(dead_letters_topic: str, letter: DeadLetter) -> Outgoing:
    """A dead letter keyed by the topic the bad input came from."""
    return Outgoing(dead_letters_topic, letter.source_topic, letter.encode())
