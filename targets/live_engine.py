"""The engine model on the wall clock: the drive loop stepped by an asyncio task, each
sequence's tokens handed to the request waiting for them."""

from __future__ import annotations

import asyncio
import time

from simulator.engine.core import Engine, EngineConfig, EngineSequence
from simulator.engine.drive import DriveLoop, EngineEvents, Sleep

CATCH_UP_S = 0.01  # a step that overslept by less than this is absorbed, not accumulated


class LiveEngine:
    """Runs the drive loop on the wall clock and hands each sequence's tokens to its waiter."""

    def __init__(self, config: EngineConfig):
        self.engine = Engine(config)
        events = EngineEvents()
        events.token.add_listener(self._on_token)
        events.finish.add_listener(self._on_finish)
        self.loop = DriveLoop(self.engine, time.monotonic, events, cold=True)
        self._wake = asyncio.Event()
        self._queues: dict[EngineSequence, asyncio.Queue[int | None]] = {}

    @property
    def ready(self) -> bool:
        return self.loop.ready

    @property
    def steps(self) -> int:
        return self.loop.steps

    @property
    def busy_s(self) -> float:
        return self.loop.busy_s

    def submit(self, seq: EngineSequence) -> asyncio.Queue[int | None]:
        queue: asyncio.Queue[int | None] = asyncio.Queue()
        self._queues[seq] = queue
        self.loop.submit(seq)
        self._wake.set()
        return queue

    def abort(self, seq: EngineSequence) -> None:
        self.loop.abort(seq)
        self._queues.pop(seq, None)

    def _on_token(self, seq: EngineSequence, now: float) -> None:
        queue = self._queues.get(seq)
        if queue is not None:
            queue.put_nowait(seq.generated)

    def _on_finish(self, seq: EngineSequence, now: float) -> None:
        queue = self._queues.pop(seq, None)
        if queue is not None:
            queue.put_nowait(None)

    async def run(self) -> None:
        """Sleeps each step to its deadline: a step that overslept a little is caught up."""
        deadline = time.monotonic()
        for command in self.loop.run():
            if isinstance(command, Sleep):
                now = time.monotonic()
                start = deadline if now - deadline < CATCH_UP_S else now
                deadline = start + command.seconds
                await asyncio.sleep(max(0.0, deadline - time.monotonic()))
            else:
                self._wake.clear()
                await self._wake.wait()
                deadline = time.monotonic()
