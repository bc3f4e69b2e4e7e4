"""Stop strings over streamed text: release text as soon as it cannot begin a stop string."""

from __future__ import annotations


class StopMatcher:
    def __init__(self, stops: tuple[str, ...]):
        self._stops = tuple(s for s in stops if s)
        self._held = ""

    def push(self, text: str) -> tuple[str, bool]:
        """Returns the text safe to release, and whether a stop string was hit."""
        self._held += text
        for stop in self._stops:
            at = self._held.find(stop)
            if at >= 0:
                out, self._held = self._held[:at], ""
                return out, True
        hold = self._partial()
        out = self._held[: len(self._held) - hold]
        self._held = self._held[len(self._held) - hold :]
        return out, False

    def flush(self) -> str:
        out, self._held = self._held, ""
        return out

    def _partial(self) -> int:
        best = 0
        for stop in self._stops:
            for size in range(min(len(stop) - 1, len(self._held)), best, -1):
                if stop.startswith(self._held[-size:]):
                    best = size
                    break
        return best
