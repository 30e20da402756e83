"""One backend's bounded queue and worker thread: pacing, coalescing, retries and isolation.

The training thread only calls ``put``, which appends under a lock and returns.
The worker sends, sleeps for pacing and retries; nothing it does can raise into
the caller. Retries here are for backends that raise a retryable
``DeliveryError``; Slack retries inside slack_sdk with its own handlers and
reports only the final outcome.
"""

from __future__ import annotations

import random
import threading
import time
from collections import deque

from .backend import Backend, Message
from .errors import DeliveryError
from .secrets import get_logger, redact

logger = get_logger("notifier")

#: A hard cap on queued messages, critical ones included, so a flood cannot grow memory.
MAX_QUEUE = 1000

#: Jitter comes from a private generator: the global ``random`` is the user's, seeded for
#: training, and a draw from it on this thread would change what training computes.
_rng = random.Random()


class Outbox:
    """Delivers one backend's messages in order, off the training thread."""

    def __init__(
        self,
        backend: Backend,
        *,
        max_backlog: int = 10,
        max_attempts: int = 5,
        max_retry_time: float = 60.0,
        backoff: float = 1.0,
        max_backoff: float = 30.0,
    ) -> None:
        self.backend = backend
        self.max_backlog = max_backlog
        self.max_attempts = max_attempts
        self.max_retry_time = max_retry_time
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._queue: deque[Message] = deque()
        # Re-entrant: a SIGTERM handler may enqueue while the main thread holds it.
        self._cond = threading.Condition(threading.RLock())
        self._busy = False
        self._thread: threading.Thread | None = None
        self._tokens = float(max(backend.burst, 1))
        self._refilled = time.monotonic()
        self.disabled = False
        self.sent = 0
        self.dropped = 0
        self.failed = 0
        self._failing = False
        # Started now rather than on the first message: a first message sent from an
        # atexit handler (a run reported as unfinished) could not start it there, as
        # Python 3.12 refuses new threads at interpreter shutdown.
        with self._cond:
            self._start_worker()

    def _start_worker(self) -> None:
        """Start the worker unless it runs (called with the lock held; again after a fork)."""
        if self._thread is not None and self._thread.is_alive():
            return
        thread = threading.Thread(
            target=self._run, name=f"notifier-{self.backend.name}", daemon=True
        )
        try:
            thread.start()
        except RuntimeError as exc:  # at interpreter shutdown
            logger.warning("%s: cannot deliver: %s", self.backend.describe(), exc)
            return
        self._thread = thread

    def put(self, message: Message) -> None:
        """Queue ``message``; when behind, the oldest skippable message makes way for the newest."""
        with self._cond:
            if self.disabled:
                return
            if message.transient:
                for stale in [m for m in self._queue if m.transient]:
                    self._queue.remove(stale)
            elif not message.critical:
                skippable = [m for m in self._queue if not (m.critical or m.transient)]
                if len(skippable) >= self.max_backlog:
                    self._evict(skippable[0], "is behind")
            if len(self._queue) >= MAX_QUEUE:
                # Start, end and crash messages are the last to go.
                ordinary = [m for m in self._queue if not m.critical]
                self._evict(ordinary[0] if ordinary else self._queue[0], "queue is full")
            if message.urgent:
                at = next((i for i, m in enumerate(self._queue) if not m.critical), None)
                self._queue.insert(len(self._queue) if at is None else at, message)
            else:
                self._queue.append(message)
            self._start_worker()
            self._cond.notify_all()

    def _evict(self, message: Message, why: str) -> None:
        self._queue.remove(message)
        self.dropped += 1
        if message.critical or self.dropped == 1 or self.dropped % 100 == 0:
            logger.warning(
                "%s %s: skipped an older %s message (%d dropped so far)",
                self.backend.describe(),
                why,
                message.event,
                self.dropped,
            )

    @property
    def pending(self) -> int:
        with self._cond:
            return len(self._queue) + self._busy

    def flush(self, timeout: float) -> bool:
        """Wait until everything queued is sent or given up on; False if ``timeout`` ran out."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._queue or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue:
                    self._cond.wait()
                message = self._queue.popleft()
                self._busy = True
            try:
                if not (message.transient or message.urgent):
                    # Card edits and heartbeats are other API methods with their own limits
                    # (chat.update, chat.scheduleMessage): they must not delay real messages;
                    # a crash report goes at once (a 429 is still honoured by the retries).
                    self._pace()
                self._deliver(message)
            except BaseException:  # noqa: BLE001 - the worker must outlive any failure
                logger.exception(
                    "notifier: internal error delivering to %s", self.backend.describe()
                )
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _pace(self) -> None:
        """A token bucket: ``burst`` messages at once, then one per ``interval`` seconds."""
        interval = self.backend.interval
        if interval <= 0:
            return
        now = time.monotonic()
        burst = float(max(self.backend.burst, 1))
        self._tokens = min(burst, self._tokens + (now - self._refilled) / interval)
        self._refilled = now
        if self._tokens < 1:
            time.sleep((1 - self._tokens) * interval)
            self._tokens, self._refilled = 1.0, time.monotonic()
        self._tokens -= 1

    def _deliver(self, message: Message) -> None:
        if self.disabled:
            return
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            try:
                self.backend.send(message)
            except DeliveryError as error:
                wait = self._retry_wait(error, attempt, started)
                if wait is None:
                    self._give_up(message, error, attempt)
                    return
                logger.debug(
                    "%s: %s; retry %d in %.1fs",
                    self.backend.describe(),
                    redact(str(error)),
                    attempt,
                    wait,
                )
                time.sleep(wait)
                continue
            except Exception as error:  # noqa: BLE001 - a bug in a backend is logged, not raised
                self.failed += 1
                logger.warning(
                    "backend %s raised %s sending %s: %s (a bug in the backend; it is not retried)",
                    self.backend.describe(),
                    type(error).__name__,
                    message.event,
                    redact(str(error)),
                    exc_info=logger.isEnabledFor(10),
                )
                return
            self.sent += 1
            if self._failing:
                self._failing = False
                logger.warning("%s: delivering again", self.backend.describe())
            return

    def _retry_wait(self, error: DeliveryError, attempt: int, started: float) -> float | None:
        """Seconds to wait before the next attempt, or None to give up."""
        if not error.retryable or attempt >= self.max_attempts:
            return None
        if error.retry_after is not None:
            wait = max(float(error.retry_after), 0.0)
        else:
            # Exponential backoff with full jitter (AWS's recommendation) keeps
            # many processes from retrying in lockstep.
            wait = _rng.uniform(0, min(self.max_backoff, self.backoff * 2 ** (attempt - 1)))
        if time.monotonic() - started + wait > self.max_retry_time:
            return None
        return wait

    def _give_up(self, message: Message, error: DeliveryError, attempts: int) -> None:
        self.failed += 1
        reason = redact(str(error))
        if error.disable:
            with self._cond:
                self.disabled = True
                skipped = len(self._queue)
                self._queue.clear()
            logger.warning(
                "%s: %s. Notifications to it are switched off for this run (%d queued message(s) "
                "discarded).",
                self.backend.describe(),
                reason,
                skipped,
            )
            return
        tries = f" after {attempts} attempts" if attempts > 1 else ""
        if not self._failing:
            self._failing = True
            logger.warning(
                "%s: could not deliver the %s message%s: %s",
                self.backend.describe(),
                message.event,
                tries,
                reason,
            )
        else:
            logger.debug(
                "%s: %s message lost%s: %s", self.backend.describe(), message.event, tries, reason
            )
