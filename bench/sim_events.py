"""A small discrete-event kernel for the swarm simulation: simulated time, one-shot events and
processes written as generators.

A process is a generator that yields either a number (sleep that many simulated seconds) or an
Event (resume once it fires, receiving its value); its return value fires the Process, which
is itself an Event. Nothing here knows about networks or swarms.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Generator
from typing import Any

__all__ = ["Event", "Kernel", "Process", "Step"]

# What a process yields: seconds to sleep, or an event to wait for.
Step = Generator["float | Event", Any, Any]


class Event:
    """Fires once with a value; whoever waits on it (callbacks, processes) runs then."""

    __slots__ = ("_kernel", "callbacks", "fired", "value")

    def __init__(self, kernel: Kernel) -> None:
        self._kernel = kernel
        self.fired = False
        self.value: Any = None
        self.callbacks: list[Callable[[Any], None]] = []

    def fire(self, value: Any = None) -> None:
        if self.fired:
            return
        self.fired = True
        self.value = value
        ready = self._kernel.ready
        for callback in self.callbacks:
            ready.append((callback, value))
        self.callbacks = []

    def then(self, callback: Callable[[Any], None]) -> None:
        if self.fired:
            self._kernel.ready.append((callback, self.value))
        else:
            self.callbacks.append(callback)


class Process(Event):
    """A generator run as a simulation process; fires with its return value."""

    __slots__ = ("_generator",)

    def __init__(self, kernel: Kernel, generator: Step) -> None:
        super().__init__(kernel)
        self._generator = generator
        kernel.ready.append((self._step, None))

    def _step(self, value: Any) -> None:
        try:
            target = self._generator.send(value)
        except StopIteration as stop:
            self.fire(stop.value)
            return
        if isinstance(target, Event):
            target.then(self._step)
        else:
            self._kernel.after(target, self._step)


class Kernel:
    def __init__(self) -> None:
        self.now = 0.0
        self.ready: deque[tuple[Callable[[Any], None], Any]] = deque()
        self._timed: list[tuple[float, int, Callable[[Any], None]]] = []
        self._sequence = 0

    def after(self, delay: float, callback: Callable[[Any], None]) -> None:
        """Call `callback(None)` `delay` simulated seconds from now."""
        self._sequence += 1
        heapq.heappush(self._timed, (self.now + delay, self._sequence, callback))

    def clock(self) -> float:
        return self.now

    def event(self) -> Event:
        return Event(self)

    def timeout(self, delay: float) -> Event:
        event = Event(self)
        self.after(delay, event.fire)
        return event

    def spawn(self, generator: Step) -> Process:
        return Process(self, generator)

    def first_of(self, events: list[Event]) -> Event:
        """Fires with the first of `events` to fire (its value is that event)."""
        first = Event(self)
        for event in events:
            event.then(lambda _, event=event: first.fire(event))
        return first

    def run(self, until: Event | None = None) -> None:
        """Run until nothing is left to do, or until `until` fires."""
        ready, timed = self.ready, self._timed
        while True:
            while ready:
                callback, value = ready.popleft()
                callback(value)
            if (until is not None and until.fired) or not timed:
                return
            self.now, _, callback = heapq.heappop(timed)
            callback(None)
