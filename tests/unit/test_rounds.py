"""Rounds: questions to a home, one request on its way per key, the rest in the next."""

from __future__ import annotations

import asyncio
from collections.abc import Hashable

import pytest

from dfagent.swarm.rounds import Rounds
from dfagent.tasks import TaskOwner


class _Home:
    """Answers each piece with (its question, the request's number); holds every request
    until `go` is set, when asked to."""

    def __init__(self) -> None:
        self.requests: list[tuple[Hashable, list[int]]] = []
        self.go = asyncio.Event()
        self.go.set()
        self.failing: set[int] = set()  # requests (by number) that fail

    async def send(self, key: Hashable, questions: dict[int, str]) -> dict[int, tuple[str, int]]:
        number = len(self.requests)
        self.requests.append((key, list(questions)))
        await self.go.wait()
        if number in self.failing:
            raise ConnectionError(f"request {number} failed")
        return {index: (question, number) for index, question in questions.items()}


@pytest.fixture
async def home_and_rounds():
    home, tasks = _Home(), TaskOwner("test")
    yield home, Rounds(home.send, tasks, "test", most=3)
    await tasks.aclose()


async def _started(rounds: Rounds, key: str, questions: dict[int, str]) -> asyncio.Task:
    task = asyncio.create_task(rounds.ask(key, questions))
    await asyncio.sleep(0)  # (asked, and the request on its way)
    await asyncio.sleep(0)
    return task


async def test_a_question_asked_alone_is_sent_at_once_and_alone(home_and_rounds):
    home, rounds = home_and_rounds
    assert await rounds.ask("k", {4: "a"}) == {4: ("a", 0)}
    assert await rounds.ask("k", {5: "b"}) == {5: ("b", 1)}
    assert home.requests == [("k", [4]), ("k", [5])]


async def test_questions_asked_while_a_request_is_on_its_way_go_together_in_the_next(
    home_and_rounds,
):
    home, rounds = home_and_rounds
    home.go.clear()
    first = await _started(rounds, "k", {0: "a"})
    second = await _started(rounds, "k", {1: "b", 2: "c"})
    third = await _started(rounds, "k", {3: "d"})
    other_key = await _started(rounds, "j", {0: "e"})  # another home or blob: its own line
    assert home.requests == [("k", [0]), ("j", [0])]
    home.go.set()
    assert await first == {0: ("a", 0)}
    assert await second == {1: ("b", 2), 2: ("c", 2)}
    assert await third == {3: ("d", 2)}
    assert await other_key == {0: ("e", 1)}
    assert home.requests == [("k", [0]), ("j", [0]), ("k", [1, 2, 3])]


async def test_a_failed_request_fails_its_own_questions_only(home_and_rounds):
    home, rounds = home_and_rounds
    home.go.clear()
    home.failing = {0}
    first = await _started(rounds, "k", {0: "a"})
    second = await _started(rounds, "k", {1: "b"})
    home.go.set()
    with pytest.raises(ConnectionError, match="request 0 failed"):
        await first
    assert await second == {1: ("b", 1)}


async def test_a_caller_that_gives_up_takes_no_answer_from_the_others(home_and_rounds):
    home, rounds = home_and_rounds
    home.go.clear()
    first = await _started(rounds, "k", {0: "a"})
    impatient = await _started(rounds, "k", {1: "b"})
    patient = await _started(rounds, "k", {2: "c"})
    first.cancel()
    impatient.cancel()
    home.go.set()
    assert await patient == {2: ("c", 1)}
    assert home.requests == [("k", [0]), ("k", [1, 2])]


async def test_more_pieces_than_one_request_takes_go_in_several(home_and_rounds):
    home, rounds = home_and_rounds
    answers = await rounds.ask("k", {i: str(i) for i in range(7)})
    assert answers == {i: (str(i), i // 3) for i in range(7)}
    assert [pieces for _, pieces in home.requests] == [[0, 1, 2], [3, 4, 5], [6]]


async def test_the_same_piece_asked_twice_in_a_round_is_asked_once(home_and_rounds):
    home, rounds = home_and_rounds
    home.go.clear()
    first = await _started(rounds, "k", {0: "a"})
    twice = [await _started(rounds, "k", {1: "b"}), await _started(rounds, "k", {1: "c"})]
    home.go.set()
    await first
    assert [await t for t in twice] == [{1: ("c", 1)}, {1: ("c", 1)}]
    assert home.requests[1] == ("k", [1])


async def test_stopping_cancels_every_question_still_waiting():
    home, tasks = _Home(), TaskOwner("test")
    rounds = Rounds(home.send, tasks, "test", most=3)
    home.go.clear()
    sent = await _started(rounds, "k", {0: "a"})
    waiting = await _started(rounds, "k", {1: "b"})
    await tasks.aclose()
    for task in (sent, waiting):
        with pytest.raises(asyncio.CancelledError):
            await task
