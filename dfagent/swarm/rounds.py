"""Requests to a blob's home, one at a time per kind: what is asked while one is on its way
goes in the next.

A home answers every member's lookups and sha256 queries for its blobs, one request at a time
on its event loop, and in a large swarm it is what sets the pace (bench/sim.py). Sending each
piece's question alone costs it a request per piece and member. Here each (home, question)
has at most one request on its way; questions about other pieces that come up meanwhile wait
for its answer and then go together. Nothing waits while the home answers at once (a request
takes a round trip, and a question asked alone goes alone); the busier the home, the longer
its answers take and the more each request carries: its load grows with the pieces asked
about, no longer also with the number of requests.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from dfagent.tasks import TaskOwner

__all__ = ["Rounds"]

K = TypeVar("K", bound=Hashable)  # what a request says once for all its pieces
Q = TypeVar("Q")  # what is asked of one piece
A = TypeVar("A")  # what the home answers of it


@dataclass
class _Round(Generic[Q, A]):
    """The questions waiting for the next request under one key."""

    questions: dict[int, Q] = field(default_factory=dict)
    waiters: dict[int, list[asyncio.Future[A]]] = field(default_factory=dict)

    def split(self, most: int) -> tuple[_Round[Q, A], _Round[Q, A]]:
        """(the first `most` pieces asked about, the rest)."""
        now, later = _Round[Q, A](), _Round[Q, A]()
        for position, (index, question) in enumerate(self.questions.items()):
            part = now if position < most else later
            part.questions[index] = question
            part.waiters[index] = self.waiters[index]
        return now, later


class Rounds(Generic[K, Q, A]):
    """Questions of one kind, batched per key (one key per home and request body: the
    blob's book, and whatever else a request says once for all its pieces). `send` sends
    one request for the pieces asked about (piece -> question) under a key, and returns the
    answer for each of them, or raises an exception that fails them all."""

    def __init__(
        self,
        send: Callable[[K, dict[int, Q]], Awaitable[dict[int, A]]],
        tasks: TaskOwner,
        name: str,
        *,
        most: int,
    ) -> None:
        self._send = send
        self._most = most  # pieces in one request at most; more wait for the next
        self._tasks = tasks
        self._name = name
        self._next: dict[K, _Round[Q, A]] = {}  # keys with a request on its way

    async def ask(self, key: K, questions: dict[int, Q]) -> dict[int, A]:
        """The home's answer for each piece asked about, asked in the next request under
        `key` (at once when none is on its way). A piece asked about twice in one round gets
        one answer (to the latest question)."""
        loop = asyncio.get_running_loop()
        sending = key in self._next
        round_ = self._next.setdefault(key, _Round())
        waiters: dict[int, asyncio.Future[A]] = {}
        for index, question in questions.items():
            waiters[index] = loop.create_future()
            round_.questions[index] = question
            round_.waiters.setdefault(index, []).append(waiters[index])
        if not sending:
            # Its own task: a caller that gives up must not take the others' answers with it.
            self._tasks.spawn(self._rounds(key), name=self._name)
        try:
            return {index: await waiter for index, waiter in waiters.items()}
        finally:  # one failed (or this caller gave up): the rest are not wanted either
            for waiter in waiters.values():
                if not waiter.cancel() and not waiter.cancelled():
                    waiter.exception()  # (retrieved: not reported as never seen)

    async def _rounds(self, key: K) -> None:
        """Send what is waiting under `key`, then what came up meanwhile, until nothing is."""
        round_: _Round[Q, A] = _Round()
        try:
            while self._next[key].questions:
                round_, self._next[key] = self._next[key].split(self._most)
                try:
                    answers = await self._send(key, round_.questions)
                except Exception as exc:  # each waiter hears why its question failed
                    _settle(round_, error=exc)
                else:
                    _settle(round_, answers=answers)
        except BaseException:  # cancelled (the agent stops): so is every question waiting
            _settle(round_)
            _settle(self._next[key])
            raise
        finally:
            del self._next[key]


def _settle(
    round_: _Round[Q, A],
    *,
    answers: dict[int, A] | None = None,
    error: Exception | None = None,
) -> None:
    """Give each waiter of `round_` its answer, or `error`; with neither, cancel it."""
    for index, waiters in round_.waiters.items():
        for waiter in waiters:
            if waiter.done():  # (a caller that gave up cancelled its own)
                continue
            if error is not None:
                waiter.set_exception(error)
            elif answers is not None:
                waiter.set_result(answers[index])
            else:
                waiter.cancel()
