"""Prometheus text exposition for the speech server, without a client library (a few counters and
histograms; the format is the documented text format 0.0.4)."""

from __future__ import annotations

import threading
from collections import defaultdict

TTFA_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0)
LAG_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
RTF_BUCKETS = (0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0)


class _Histogram:
    def __init__(self, buckets: tuple[float, ...]):
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.total = 0
        self.sum = 0.0

    def observe(self, v: float) -> None:
        self.total += 1
        self.sum += v
        for i, b in enumerate(self.buckets):
            if v <= b:
                self.counts[i] += 1

    def render(self, name: str, help_: str) -> list[str]:
        out = [f"# HELP {name} {help_}", f"# TYPE {name} histogram"]
        for b, c in zip(self.buckets, self.counts, strict=True):
            out.append(f'{name}_bucket{{le="{b}"}} {c}')
        out += [f'{name}_bucket{{le="+Inf"}} {self.total}', f"{name}_sum {self.sum:.6f}", f"{name}_count {self.total}"]
        return out


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, str], int] = defaultdict(int)
        self.responses: dict[tuple[str, int], int] = defaultdict(int)
        self.ttfa = _Histogram(TTFA_BUCKETS)
        self.rtf = _Histogram(RTF_BUCKETS)
        self.loop_lag = _Histogram(LAG_BUCKETS)
        self.loop_lag_max = 0.0
        self.audio_seconds = 0.0
        self.running = 0
        self.queued = 0
        self.parked = 0
        self.load_seconds = 0.0

    def observe(self, outcome: str, fmt: str, ttfa: float | None, rtf: float | None, audio_s: float) -> None:
        """One speech stream that started: outcome ok, error, disconnected, stalled (cut: the client stopped
        reading) or shutdown (cut at the end of the grace period)."""
        with self._lock:
            self.requests[(outcome, fmt)] += 1
            if ttfa is not None:
                self.ttfa.observe(ttfa)
            if rtf is not None:
                self.rtf.observe(rtf)
            self.audio_seconds += audio_s

    def response(self, route: str, status: int) -> None:
        """One HTTP response of any status (refusals included); ``route`` is a known path or "other"."""
        with self._lock:
            self.responses[(route, status)] += 1

    def observe_lag(self, lag: float) -> None:
        with self._lock:
            self.loop_lag.observe(lag)
            self.loop_lag_max = max(self.loop_lag_max, lag)

    def render(self) -> str:
        with self._lock:
            out = ["# HELP sambert_http_responses_total Every HTTP response, by route and status (0: none sent).",
                   "# TYPE sambert_http_responses_total counter"]
            for (route, status), n in sorted(self.responses.items()):
                out.append(f'sambert_http_responses_total{{route="{route}",status="{status}"}} {n}')
            out += ["# HELP sambert_requests_total Speech requests by outcome and response format.",
                   "# TYPE sambert_requests_total counter"]
            for (outcome, fmt), n in sorted(self.requests.items()):
                out.append(f'sambert_requests_total{{outcome="{outcome}",format="{fmt}"}} {n}')
            out += self.ttfa.render("sambert_time_to_first_audio_seconds",
                                    "From the request's arrival (queueing included) to the first audio chunk, in seconds.")
            out += self.rtf.render("sambert_real_time_factor", "Wall time over audio time per request.")
            out += self.loop_lag.render("sambert_event_loop_lag_seconds",
                                        "How late the event loop ran a 50 ms timer (a busy loop delays every request).")
            out += ["# HELP sambert_event_loop_lag_max_seconds The worst event-loop lag since start.",
                    "# TYPE sambert_event_loop_lag_max_seconds gauge",
                    f"sambert_event_loop_lag_max_seconds {self.loop_lag_max:.6f}"]
            out += ["# HELP sambert_audio_seconds_total Audio produced, in seconds.",
                    "# TYPE sambert_audio_seconds_total counter", f"sambert_audio_seconds_total {self.audio_seconds:.3f}",
                    "# HELP sambert_streams_in_flight Streams synthesizing now.", "# TYPE sambert_streams_in_flight gauge",
                    f"sambert_streams_in_flight {self.running}",
                    "# HELP sambert_streams_queued Streams waiting for a slot.", "# TYPE sambert_streams_queued gauge",
                    f"sambert_streams_queued {self.queued}",
                    "# HELP sambert_streams_parked Streams whose client is not reading, their slot lent out.",
                    "# TYPE sambert_streams_parked gauge", f"sambert_streams_parked {self.parked}",
                    "# HELP sambert_load_seconds Time to load the voices at start-up.",
                    "# TYPE sambert_load_seconds gauge", f"sambert_load_seconds {self.load_seconds:.3f}"]
            return "\n".join(out) + "\n"
