"""A stop request that cannot be swallowed: a signal handler records it, safe points raise it.

A handler that only raises can land anywhere, inside a weakref callback or a ``__del__``
included, where Python prints "Exception ignored ... Terminated" and carries on: the run then
finishes and exits 0 as if no signal had come. So the handler also records the request here,
and the long loops (training batches, sampling batches, Pythia chunks) call `check` between
steps, where raising is safe.
"""

from __future__ import annotations


class Terminated(KeyboardInterrupt):
    """SIGTERM (what batch schedulers send), raised like Ctrl-C so every cleanup runs."""


_pending: list[type[KeyboardInterrupt]] = []


def request(kind: type[KeyboardInterrupt] = Terminated) -> None:
    """Record a stop request (from a signal handler)."""
    _pending[:] = [kind]


def requested() -> type[KeyboardInterrupt] | None:
    """The pending request's exception type, if any."""
    return _pending[0] if _pending else None


def check() -> None:
    """Raise the pending stop request, if any (call between steps of long loops)."""
    if _pending:
        raise _pending[0]


def clear() -> None:
    """Forget a request (a new command starts clean)."""
    _pending.clear()
