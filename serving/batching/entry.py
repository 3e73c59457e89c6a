"""One queued request: what the planner orders, routes and batches."""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field

from serving.errors import ServingError
from serving.slo import Ticket
from serving.types import Tensors, WorkItem

Result = Tensors | ServingError
_sequence = itertools.count()


@dataclass(eq=False, slots=True)
class Entry:
    item: WorkItem
    ticket: Ticket
    rows: int
    future: asyncio.Future[tuple[Result, str]] | None = None  # result, pool that ran it
    seq: int = field(default_factory=lambda: next(_sequence))
    failed_over: bool = False  # sent again after its pool went down (once at most)

    def key(self) -> tuple[int, float, int]:
        """Queue order: priority first, then earliest deadline, then arrival."""
        return (self.ticket.priority, self.ticket.deadline, self.seq)
