"""Exponential backoff with full jitter (AWS style), capped, honouring a server's retry-after.

delay(attempt) = uniform(0, min(cap, base * 2**attempt)). Full jitter spreads a
fleet that failed at the same moment (an outage) over the whole window, so
the reconnects do not arrive as one stampede. When the server asks for a
pause (retry_after), the delay is that pause plus a jittered share of the
window, i.e. never shorter than asked and still spread out. A pause asked for
in an unsigned reply (anyone on the path can forge it) is honoured only inside
the normal window: it can never make the wait longer than the backoff would.
"""

from __future__ import annotations

import math
import random

from omega.errors import OmegaError


class Backoff:
    """Delays between failed attempts; `reset()` after a success. Deterministic under an injected RNG."""

    def __init__(
        self,
        base_s: float,
        cap_s: float,
        *,
        rng: random.Random | None = None,
        first_immediate: bool = False,
    ) -> None:
        if not (base_s > 0 and cap_s >= base_s):
            raise OmegaError(f"backoff needs 0 < base <= cap, got base={base_s!r}, cap={cap_s!r}")
        self.base_s = float(base_s)
        self.cap_s = float(cap_s)
        #: Retry the first failure at once (a persistent connection that just dropped).
        self.first_immediate = first_immediate
        self.attempt = 0
        self._rng = rng or random.Random()

    def window(self, attempt: int | None = None) -> float:
        """Upper bound of the jittered delay for `attempt` (default: the next one)."""
        n = self.attempt if attempt is None else attempt
        if self.first_immediate:
            if n == 0:
                return 0.0
            n -= 1
        # 2**n overflows float only far beyond any cap; clamp the exponent first.
        return min(self.cap_s, self.base_s * 2.0 ** min(n, 64))

    def next_delay(
        self, retry_after_s: float | None = None, *, trusted: bool = True, max_pause_s: float = math.inf
    ) -> float:
        """The delay before the next attempt (and count this failure).

        A trusted (signed) pause is added to the jitter, up to `max_pause_s`; an untrusted one only
        lengthens the jittered delay up to this attempt's window, never beyond it.
        """
        window = self.window()
        delay = self._rng.uniform(0.0, window)
        self.attempt += 1
        pause = float(retry_after_s) if retry_after_s is not None and retry_after_s > 0 else 0.0
        if not math.isfinite(pause):
            pause = math.inf
        if pause > 0:
            if trusted:
                delay += min(pause, max_pause_s)
            else:
                delay = max(delay, min(pause, window))
        return delay

    def reset(self) -> None:
        self.attempt = 0
