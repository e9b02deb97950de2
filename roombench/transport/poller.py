"""One greenlet that reads every established connection of the process.

A greenlet per connection costs a hub switch in and out for every wake-up (at tens of
thousands of messages per second that is a good part of the generator's CPU) and ~5 KB
of saved stack and greenlet per connection. Instead, the established connections'
sockets sit in one ``epoll`` set; gevent's hub watches only that set's descriptor, and
when it is readable the poller greenlet calls each ready connection's callback in turn:
no switch per connection, one ``epoll_wait`` per batch.

The epoll set is level-triggered: a callback that reads once and leaves data behind is
called again on the next round, so one busy connection cannot starve the others. Nor may
the poller starve the process's other greenlets: under saturation ``poll(0)`` always
finds something ready, so the poller would never park, and users still connecting, the
lag probe, Locust's stats and web UI would wait for as long as the load lasts (1,000
users ramped into a closed loop: connects timed out by the hundred, loop lag p99 0.58 s).
After :data:`SHARE_S` of callbacks it lets the hub run everything else that is ready.
Callbacks run inline in the poller greenlet, so they must not block for long: a send
that has to wait for buffer space holds every other connection's reads meanwhile.
Linux only (``select.epoll``); :func:`available` says whether it can be used.

Timers ride on the same loop: a :class:`Timers` source (the chat layer's send clock)
set as :attr:`Poller.timers` has its due work run between batches of reads, and the
poller parks on "a connection is readable *or* the next timer is due", so under load a
due send costs no timer and no greenlet switch: it goes out on a wake-up the reads
caused anyway.

Between reads the poller waits in its own set, not in the hub: a wake-up through the hub
costs a second ``epoll_wait``, two greenlet switches, a libev timer and a Waiter, about
once per ack in a closed loop of 50 connections (``perf stat``: 1.0 ``epoll_wait`` per
ack now, 1.9 before, python-raw's 1.08). The hub's own epoll descriptor is in
the set, so another greenlet's I/O (a connect, a backfill, Locust's messages) wakes the
wait and gets the hub's turn at once; only the hub's timers and queued callbacks wait,
at most :data:`HUB_TURN_S`, after which the hub gets its turn. A whole turn without a
read parks the poller in the hub as before, taking the hub's descriptor out first (the
hub then watches the set, and the kernel refuses the cycle; libev lets go of the set
lazily, so it goes back in on the next reads, after a hub turn). Pinned A/B over 50
connections, 4 alternating rounds (`bench/generators/run.py --suites ack,equal --pin`):
11 % less CPU per ack in the closed loop and 13 % at 15,000 acks/s offered, lower in
every round; within the spread at 5,000/s and at 1,000 connections.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

import gevent
from gevent.hub import Waiter, get_hub
from gevent.monkey import get_original

_EPOLLIN = 1


def _original_epoll() -> Any:
    # gevent's monkey-patched select module has no epoll: take the standard library's
    try:
        return get_original("select", "epoll")
    except AttributeError:  # not Linux
        return None


_epoll = _original_epoll()

__all__ = ["POLLER", "Poller", "Timers", "available"]

_now = time.perf_counter
_INF = float("inf")
#: longest run of callbacks before the poller lets the hub run the process's other greenlets
SHARE_S = 0.005
#: libev's EV_MINPRI
_LOWEST_PRIORITY = -2
#: longest wait in the poller's own set before the hub's timers and callbacks get a turn
HUB_TURN_S = 0.001


class Timers(Protocol):
    """Due work the poller runs between reads (see the module docstring)."""

    def next_due(self) -> float:
        """perf_counter time of the earliest due item; ``inf`` when there is none."""
        ...

    def run_due(self) -> None:
        """Run (a bounded batch of) what is due now; must not block for long."""
        ...


def available() -> bool:
    """True where ``select.epoll`` exists (Linux)."""
    return _epoll is not None


def _share() -> None:
    """The process's other greenlets' turn: a whole turn of the hub's loop, at most SHARE_S.

    ``gevent.idle()``: libev runs an idle watcher only in a loop turn with nothing else to
    do, so the greenlets that were ready, and the I/O and timers that came due, have all
    had their go. At libev's lowest priority: a ``gevent.Timeout`` timer has priority -1,
    below the default idle's 0, so a zero timeout (urllib3 checks a kept-alive connection
    with ``poll(0)``) came due in the turn and still waited for the next one: a REST fetch
    beside the load took 4.0 ms instead of 2.5 (``bench/micro/bench_side_io.py``).
    Not ``sleep(0)``: from here that only runs the callbacks queued, ours among them, and
    is back before the loop turned (its I/O and timers waited for gevent's clock check
    every 50 callbacks: a 10 ms sleep woke 0.1-0.25 s late beside a saturated poller,
    starving the lag probe, backfills and reconnects). Bounded, because a loop that
    is never idle (a greenlet spinning on ``sleep(0)``) would otherwise hold every read.
    """
    with gevent.Timeout(SHARE_S, False):
        gevent.idle(_LOWEST_PRIORITY)


def _queued(loop: Any) -> Callable[[], int]:
    """How many callbacks wait for the hub's turn (greenlets made ready, spawns, kicks)."""
    fifo = getattr(loop, "_callbacks", None)
    return fifo.__len__ if fifo is not None and hasattr(fifo, "__len__") else (lambda: 1)


def _hub_fd(loop: Any) -> int | None:
    """The hub's own epoll descriptor (libev's backend), or None where it has none."""
    try:
        return loop.fileno() if getattr(loop, "backend", None) == "epoll" else None
    except (AttributeError, OSError):
        return None


def _watch_hub(ep: Any, hub_fd: int | None) -> bool | None:
    """Put the hub's descriptor into the poller's set, so that its I/O wakes a poller
    waiting there. False while the kernel refuses (the hub still watches the poller's set
    after a park, until its loop next sees that set readable); None: the hub has none."""
    if hub_fd is None:
        return None
    try:
        ep.register(hub_fd, _EPOLLIN)
    except FileExistsError:  # a poller restarted on the same set
        return True
    except OSError:  # ELOOP
        return False
    return True


class Poller:
    """The process's reader of established connections (see the module docstring)."""

    def __init__(self) -> None:
        self._ep: Any = None
        self._callbacks: dict[int, Callable[[], None]] = {}
        self._glet: gevent.Greenlet | None = None
        #: due work run on this loop's wake-ups; None: reads only
        self.timers: Timers | None = None
        self._waiter: Waiter | None = None  # set while parked on "readable or due"

    @property
    def running(self) -> bool:
        """True while the poller's greenlet runs (some connection is registered)."""
        return self._glet is not None and not self._glet.dead

    def kick(self) -> None:
        """Make a parked poller look at :attr:`timers` again (an earlier item was added)."""
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            # a fresh Waiter per park: a switch arriving after the park ended only stores a value
            get_hub().loop.run_callback(waiter.switch, None)

    def __len__(self) -> int:
        return len(self._callbacks)

    @property
    def greenlet(self) -> gevent.Greenlet | None:
        """The poller's greenlet while it runs (callbacks run in it)."""
        return self._glet

    def add(self, fd: int, callback: Callable[[], None]) -> None:
        """Call ``callback()`` whenever ``fd`` is readable (or at EOF / on an error)."""
        if self._ep is None or self._ep.closed:
            self._ep = _epoll()
        if fd in self._callbacks:  # a descriptor number reused after a close: start afresh
            self.discard(fd)
        self._ep.register(fd, _EPOLLIN)
        self._callbacks[fd] = callback
        if self._glet is None or self._glet.dead:
            self._glet = gevent.spawn(self._run)

    def discard(self, fd: int) -> None:
        """Stop watching ``fd``; call it before closing the socket (harmless after).
        The last one out ends the greenlet (a later :meth:`add` starts a new one)."""
        if self._callbacks.pop(fd, None) is None or self._ep is None:
            return
        try:
            self._ep.unregister(fd)
        except (OSError, ValueError):  # already closed: the kernel dropped it from the set
            pass
        glet = self._glet
        if not self._callbacks and glet is not None and glet is not gevent.getcurrent():
            self._glet, self._ep = None, None  # the dying greenlet closes its set
            glet.kill(block=False)

    def _run(self) -> None:
        ep = self._ep
        assert ep is not None
        callbacks = self._callbacks
        hub = get_hub()
        loop = hub.loop
        watcher = loop.io(ep.fileno(), 1)
        poll = ep.poll
        queued = _queued(loop)
        hub_fd = _hub_fd(loop)
        hub_in_set = _watch_hub(ep, hub_fd)
        shared = _now()
        read = False  # whether a read came since the hub's last turn
        try:
            while callbacks:
                timers = self.timers
                t = _now()
                due = _INF
                if timers is not None:
                    due = timers.next_due()
                    if due <= t:
                        timers.run_due()
                        due = timers.next_due()
                if t - shared > SHARE_S:  # busy since the last park or share: the others' turn
                    _share()
                    shared, read = _now(), False
                if hub_in_set and not queued():
                    # wait right here: no hub switch and one epoll_wait; the hub's own I/O
                    # wakes us (its descriptor is in the set), its timers wait <= HUB_TURN_S
                    turn = shared + HUB_TURN_S
                    wait = min(due, turn) - _now()
                    events = poll(wait if wait > 0 else 0)
                    if not events:
                        now = _now()
                        if now < turn or due <= now:
                            continue
                        if read:  # busy: the hub's turn, then on
                            _share()
                            shared, read = _now(), False
                            continue
                        # a whole turn without a read: sleep in the hub until readable or due;
                        # the hub is to watch this set, so its descriptor must leave it
                        ep.unregister(hub_fd)
                        hub_in_set = False
                        self._park(hub, watcher, due)
                        shared = _now()
                        continue
                else:
                    events = poll(0)
                    if not events:
                        if due <= _now():
                            continue
                        if hub_in_set:  # callbacks queued: the hub's turn, then on
                            _share()
                            shared, read = _now(), False
                        else:
                            self._park(hub, watcher, due)
                            shared, read = _now(), False
                        continue
                    if hub_in_set is False:
                        # the hub keeps watching this set after a park until its loop sees it
                        # readable (libev lets go lazily): now, before the reads, it is
                        _share()
                        shared, read = _now(), False
                        hub_in_set = _watch_hub(ep, hub_fd)
                read, hub_ready = True, False
                for fd, _ in events:
                    callback = callbacks.get(fd)
                    if callback is not None:
                        try:
                            callback()
                        except Exception:  # noqa: BLE001, S110 - callbacks report their own errors;
                            pass  # one that did not must not stop every other connection's reads
                    elif fd == hub_fd:
                        hub_ready = True
                if hub_ready:  # the hub has I/O of its own: its turn, after this batch
                    _share()
                    shared, read = _now(), False
        finally:
            self._waiter = None
            watcher.close()
            if self._glet is gevent.getcurrent():
                self._glet = None
            if self._ep is not ep or not callbacks:
                if self._ep is ep:
                    self._ep = None
                ep.close()
            elif self._glet is None:  # killed from outside with connections left: go on
                self._glet = gevent.spawn(self._run)

    def _park(self, hub: Any, watcher: Any, due: float) -> None:
        """Wait until the epoll set is readable, ``due`` comes (inf: never), or :meth:`kick`."""
        timer = hub.loop.timer(max(0.0, due - _now())) if due != _INF else None
        waiter = self._waiter = Waiter(hub)
        watcher.start(waiter.switch, None)
        if timer is not None:
            timer.start(waiter.switch, None)
        try:
            waiter.get()
        finally:
            self._waiter = None
            watcher.stop()
            if timer is not None:
                timer.close()


#: the process's poller; :class:`~roombench.transport.framed.FramedTransport` registers its connections here
POLLER = Poller()
