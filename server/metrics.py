"""Prometheus instruments, one registry per app (so tests can build many apps).

Names follow Prometheus conventions (`_seconds`, `_total`, base units). Label values that
come from requests (tool names) are bounded, so a client cannot blow up cardinality.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_FAST = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1)
_MAX_TOOL_LABELS = 500


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.request_seconds = Histogram(
            "callgate_request_duration_seconds",
            "Request latency, to the last byte.",
            ["model", "adapter", "endpoint", "status"],
            buckets=_LATENCY,
            registry=r,
        )
        self.ttft_seconds = Histogram(
            "callgate_time_to_first_token_seconds",
            "Time from admission to the first token.",
            ["model", "adapter"],
            buckets=_LATENCY,
            registry=r,
        )
        self.inter_token_seconds = Histogram(
            "callgate_inter_token_latency_seconds",
            "Mean time per output token of a request.",
            ["model", "adapter"],
            buckets=_FAST,
            registry=r,
        )
        self.prompt_tokens = Counter(
            "callgate_prompt_tokens", "Prompt tokens processed.", ["model", "adapter"], registry=r
        )
        self.completion_tokens = Counter(
            "callgate_completion_tokens", "Tokens generated.", ["model", "adapter"], registry=r
        )
        self.queue_depth = Gauge("callgate_queue_depth", "Requests waiting for an engine slot.", ["model"], registry=r)
        self.running = Gauge("callgate_running_requests", "Requests holding an engine slot.", ["model"], registry=r)
        self.queue_wait_seconds = Histogram(
            "callgate_queue_wait_seconds",
            "Time spent waiting for an engine slot.",
            ["model"],
            buckets=_LATENCY,
            registry=r,
        )
        self.compile_seconds = Histogram(
            "callgate_constraint_compile_seconds", "Time to build and check a constraint.", buckets=_FAST, registry=r
        )
        self.constraint_cache = Counter(
            "callgate_constraint_cache", "Constraint cache lookups.", ["result"], registry=r
        )
        self.tool_calls = Counter(
            "callgate_tool_calls",
            "Tool-call outcomes (one per call, or per request without one).",
            ["model", "adapter", "tool", "mode", "outcome"],
            registry=r,
        )
        self.tool_open_probability = Histogram(
            "callgate_tool_open_probability",
            "P(opening a call) at the decision point, when a no-tool threshold applies; for calibrating it.",
            ["model"],
            buckets=tuple(i / 20 for i in range(1, 21)),
            registry=r,
        )
        self.engine_errors = Counter(
            "callgate_engine_errors",
            "Engine failures (answered 502 or ended with an error event).",
            ["model"],
            registry=r,
        )
        self.replica_healthy = Gauge(
            "callgate_replica_healthy",
            "1 while an upstream replica passes health checks and its circuit breaker is closed; 0 otherwise.",
            ["replica"],
            registry=r,
        )
        self.replica_outstanding = Gauge(
            "callgate_replica_outstanding_requests",
            "Requests this gateway has in flight at a replica.",
            ["replica"],
            registry=r,
        )
        self.upstream_errors = Counter(
            "callgate_upstream_errors",
            "Upstream replica failures by kind (connect, timeout, disconnect, "
            "overloaded, status, rejected, not_found, protocol).",
            ["replica", "kind"],
            registry=r,
        )
        self.draining = Gauge(
            "callgate_draining", "1 while this replica drains after SIGTERM (refusing new requests).", registry=r
        )
        self._tool_labels: set[str] = set()

    def tool_label(self, name: str) -> str:
        if name in self._tool_labels or len(self._tool_labels) < _MAX_TOOL_LABELS:
            self._tool_labels.add(name)
            return name
        return "_other"
