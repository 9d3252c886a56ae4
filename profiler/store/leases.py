"""Device leases: one campaign times on a device at a time, across processes and machines.

Two campaigns timing one board at once corrupt each other (contention is what the timing
protocol keeps out), so whatever times on a device holds its lease: a row in the store's
``leases`` table naming the holder (host, pid, command) with an expiry. The holder renews it
in the background every ``ttl_s / 3``; it is released on exit. A holder that died stops
renewing and its lease is taken over once it has expired; on the holder's own host a dead
pid is seen at once. A holder whose lease was taken from it (it stalled past the expiry)
finds out at its next renewal: ``lost`` is set and the campaign stops before its next op.

Taking a lease is two atomic statements that work alike on SQLite and PostgreSQL: insert
the row (only one inserter wins the primary key), else update it where it has expired or is
ours (only one updater wins the row). A process holds one lease per device however many
campaigns in it use the device (re-entrant, counted).
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass

import sqlalchemy as sa

from hwlat.errors import HwlatError
from hwlat.profiler.store import Store, schema

log = logging.getLogger(__name__)

LEASE_TTL_ENV = "HWLAT_LEASE_TTL_S"
DEFAULT_TTL_S = 30.0


def _new_holder() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


_holder = _new_holder()


def holder_id() -> str:
    """Who this process is in the leases table and as a search worker: ``host:pid:random``."""
    return _holder


class DeviceBusyError(HwlatError):
    """Another campaign holds the device's lease and the caller would not wait."""


class LeaseLostError(HwlatError):
    """This process's lease on a device was taken over (it stalled past the expiry)."""


@dataclass(frozen=True)
class Lease:
    device: str
    holder: str
    host: str
    pid: int
    command: str
    acquired_at: float
    expires_at: float

    def describe(self) -> str:
        left = self.expires_at - time.time()
        return (
            f"{self.command or 'a campaign'} (pid {self.pid} on {self.host}, since "
            f"{time.strftime('%H:%M:%S', time.localtime(self.acquired_at))}, "
            + (f"expires in {left:.0f} s)" if left > 0 else "expired)")
        )


def ttl_s() -> float:
    return float(os.environ.get(LEASE_TTL_ENV, DEFAULT_TTL_S))


def current_leases(engine: sa.Engine) -> list[Lease]:
    with engine.connect() as conn:
        rows = conn.execute(sa.select(schema.leases).order_by(schema.leases.c.device)).all()
    return [Lease(**row._asdict()) for row in rows]


def _try_acquire(engine: sa.Engine, device: str, command: str, ttl: float) -> Lease | None:
    """Take the lease, or return who holds it."""
    t = schema.leases
    now = time.time()
    mine = {
        "holder": holder_id(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "command": command,
        "acquired_at": now,
        "expires_at": now + ttl,
    }
    try:
        with engine.begin() as conn:
            conn.execute(sa.insert(t).values(device=device, **mine))
        return None
    except sa.exc.IntegrityError:
        pass
    with engine.begin() as conn:
        held = conn.execute(sa.select(t).where(t.c.device == device)).first()
        if held is None:
            return _try_acquire(engine, device, command, ttl)  # released in between
        stale = held.expires_at < now or held.holder == holder_id() or _dead_here(held.host, held.pid)
        if stale:
            taken = conn.execute(
                sa.update(t).where((t.c.device == device) & (t.c.holder == held.holder)).values(**mine)
            )
            if taken.rowcount == 1:
                if held.holder != holder_id():
                    log.warning("took over the lease on %s from %s, which is gone", device, held.holder)
                return None
        return Lease(**held._asdict())


def _dead_here(host: str, pid: int) -> bool:
    if host != socket.gethostname() or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return _zombie(pid)


def _zombie(pid: int) -> bool:
    """Dead but not yet reaped (its parent, e.g. a script that started campaigns with Popen, has not
    waited for it): it still answers kill(pid, 0), yet holds nothing. Linux only (/proc)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            state = fh.read().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state in ("Z", "X")


class _Held:
    """One device's lease held by this process, renewed by a thread until the last user leaves."""

    def __init__(self, engine: sa.Engine, device: str, ttl: float) -> None:
        self.engine, self.device, self.ttl = engine, device, ttl
        self.users = 1
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, name=f"hwlat-lease-{device}", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        t = schema.leases
        while not self._stop.wait(self.ttl / 3):
            try:
                with self.engine.begin() as conn:
                    renewed = conn.execute(
                        sa.update(t)
                        .where((t.c.device == self.device) & (t.c.holder == holder_id()))
                        .values(expires_at=time.time() + self.ttl)
                    )
            except sa.exc.DBAPIError as exc:  # the database is briefly unreachable: try again
                log.warning("could not renew the lease on %s: %s", self.device, exc.orig)
                continue
            if renewed.rowcount != 1:
                self.lost.set()
                log.warning("the lease on %s was taken over by another campaign", self.device)
                return

    def release(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        t = schema.leases
        try:
            with self.engine.begin() as conn:
                conn.execute(sa.delete(t).where((t.c.device == self.device) & (t.c.holder == holder_id())))
        except sa.exc.DBAPIError:
            pass  # it expires by itself


_HELD: dict[tuple[str, str], _Held] = {}
_HELD_LOCK = threading.Lock()


def _forked() -> None:
    """A forked child (multiprocessing's default on Linux) is another holder: its own id, and none
    of its parent's leases, whose renewal threads stayed in the parent. Sharing the parent's id
    would let it take the parent's device, or a sibling's, as its own."""
    global _holder, _HELD_LOCK
    _holder = _new_holder()
    _HELD.clear()
    _HELD_LOCK = threading.Lock()  # another thread of the parent may have held it at the fork


os.register_at_fork(after_in_child=_forked)


class DeviceLease:
    """``with DeviceLease(store, "pi", "hwlat profile"):`` times on "pi" alone.

    Waits (logging who holds the device every ``report_every_s``) unless ``wait`` is False,
    in which case a held device raises DeviceBusyError at once.
    """

    def __init__(
        self,
        store: Store,
        device: str,
        command: str = "",
        wait: bool = True,
        poll_s: float = 1.0,
        report_every_s: float = 30.0,
    ) -> None:
        self.engine = store.engine
        self.location = store.location
        self.device = device
        self.command = command or " ".join(["hwlat", *sys.argv[1:]])[:200]
        self.wait = wait
        self.poll_s = poll_s
        self.report_every_s = report_every_s
        self._held: _Held | None = None

    @property
    def lost(self) -> bool:
        return self._held is not None and self._held.lost.is_set()

    def check(self) -> None:
        """Raise LeaseLostError if another campaign took the device over."""
        if self.lost:
            raise LeaseLostError(
                f"the lease on device {self.device!r} was taken over by another campaign while this "
                "one stalled; what was measured is stored",
                "re-run the same command to resume",
            )

    def __enter__(self) -> DeviceLease:
        slot = (self.location, self.device)
        with _HELD_LOCK:
            if slot in _HELD:
                _HELD[slot].users += 1
                self._held = _HELD[slot]
                return self
        ttl = ttl_s()
        last_report = 0.0
        while True:
            holder = _try_acquire(self.engine, self.device, self.command, ttl)
            if holder is None:
                break
            if not self.wait:
                raise DeviceBusyError(
                    f"device {self.device!r} is in use by {holder.describe()}",
                    "wait for it, or drop --no-wait to queue behind it",
                )
            if time.monotonic() - last_report >= self.report_every_s:
                log.warning("device %s is in use by %s; waiting for it", self.device, holder.describe())
                last_report = time.monotonic()
            time.sleep(self.poll_s)
        with _HELD_LOCK:
            self._held = _HELD[slot] = _Held(self.engine, self.device, ttl)
        return self

    def __exit__(self, *exc) -> None:
        slot = (self.location, self.device)
        with _HELD_LOCK:
            held = self._held
            self._held = None
            if held is None:
                return
            held.users -= 1
            if held.users > 0:
                return
            del _HELD[slot]
        held.release()
