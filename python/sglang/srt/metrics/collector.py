"""Prometheus metrics (``--enable-metrics``): SGLang's metric names, served at ``/metrics``.

The HTTP process owns one registry. Request metrics are fed by the tokenizer manager as requests
progress (``on_tokens``: time to first token, inter-token latency; ``on_release``: end-to-end
latency and the token and request counters, once per request). The engine's gauges (running and
queued requests, KV usage, prefix-cache hit rate, generation throughput) are read from the engine's
internal state when ``/metrics`` is scraped. Names, label names and histogram buckets follow SGLang
(``sglang:...``, label ``model_name``), so its dashboards work unchanged.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from sglang.srt.managers.finish_reason import FinishKind
from sglang.srt.managers.req_state import ReqState

TTFT_BUCKETS = [0.1, 0.2, 0.4, 0.6, 0.8, 1, 2, 4, 6, 8, 10, 20, 40, 60, 80, 100, 200, 400]
E2E_BUCKETS = TTFT_BUCKETS + [600, 1200, 1800, 2400]
ITL_BUCKETS = [0.002, 0.004, 0.006, 0.008, 0.010, 0.015, 0.020, 0.025, 0.030, 0.035, 0.040,
               0.060, 0.080, 0.100, 0.200, 0.400, 0.600, 0.800, 1.000, 2.000, 4.000, 6.000,
               8.000]


class MetricsCollector:
    def __init__(self, model_name: str) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        engine_labels = ["model_name", "engine_type", "tp_rank", "pp_rank"]
        self.engine_label_values = {"model_name": model_name, "engine_type": "unified",
                                    "tp_rank": "0", "pp_rank": "0"}
        self.gauges = {
            "num_running_reqs": Gauge("sglang:num_running_reqs", "The number of running requests.",
                                      engine_labels, registry=r),
            "num_queue_reqs": Gauge("sglang:num_queue_reqs",
                                    "The number of requests in the waiting queue.",
                                    engine_labels, registry=r),
            "token_usage": Gauge("sglang:token_usage", "The token usage.", engine_labels,
                                 registry=r),
            "cache_hit_rate": Gauge("sglang:cache_hit_rate", "The prefix cache hit rate.",
                                    engine_labels, registry=r),
            "gen_throughput": Gauge("sglang:gen_throughput",
                                    "The generation throughput (token/s).", engine_labels,
                                    registry=r),
        }
        labels = ["model_name"]
        self.labels = {"model_name": model_name}
        self.prompt_tokens = Counter("sglang:prompt_tokens_total",
                                     "Number of prefill tokens processed.", labels, registry=r)
        self.generation_tokens = Counter("sglang:generation_tokens_total",
                                         "Number of generation tokens processed.", labels,
                                         registry=r)
        self.cached_tokens = Counter("sglang:cached_tokens_total",
                                     "Number of cached prompt tokens.", labels, registry=r)
        self.num_requests = Counter("sglang:num_requests_total", "Number of requests processed.",
                                    labels, registry=r)
        self.num_aborted = Counter("sglang:num_aborted_requests_total",
                                   "Number of requests aborted.", labels, registry=r)
        self.num_failed = Counter("sglang:num_failed_requests_total",
                                  "Number of requests that ended with an error status.",
                                  labels + ["code"], registry=r)
        self.engine_restarts = Counter("sglang:engine_restarts_total",
                                       "Number of times the engine process was restarted.",
                                       labels, registry=r)
        self.ttft = Histogram("sglang:time_to_first_token_seconds",
                              "Histogram of time to first token in seconds.", labels,
                              buckets=TTFT_BUCKETS, registry=r)
        self.itl = Histogram("sglang:inter_token_latency_seconds",
                             "Histogram of inter-token latency in seconds.", labels,
                             buckets=ITL_BUCKETS, registry=r)
        self.e2e = Histogram("sglang:e2e_request_latency_seconds",
                             "Histogram of End-to-end request latency in seconds", labels,
                             buckets=E2E_BUCKETS, registry=r)
        # Children created up front, so every series shows (at 0) from the first scrape.
        for metric in (self.prompt_tokens, self.generation_tokens, self.cached_tokens,
                       self.num_requests, self.num_aborted, self.engine_restarts, self.ttft,
                       self.itl, self.e2e):
            metric.labels(**self.labels)
        for gauge in self.gauges.values():
            gauge.labels(**self.engine_label_values)

    # ---- request progress (tokenizer manager) ----------------------------------------------------
    def on_tokens(self, state: ReqState, num_new: int, now: float) -> None:
        """A request received ``num_new`` tokens at ``now``."""
        if num_new <= 0:
            return
        if state.first_token_time is None:
            self.ttft.labels(**self.labels).observe(now - state.created)
        elif state.last_token_time is not None:
            # SGLang's shortcut: the interval is spread over the tokens it brought.
            per_token = (now - state.last_token_time) / num_new
            child = self.itl.labels(**self.labels)
            for _ in range(num_new):
                child.observe(per_token)

    def on_release(self, state: ReqState) -> None:
        """A request is done with (finished, failed, or abandoned by its client)."""
        self.num_requests.labels(**self.labels).inc()
        self.prompt_tokens.labels(**self.labels).inc(state.prompt_tokens)
        self.generation_tokens.labels(**self.labels).inc(len(state.output_ids))
        self.cached_tokens.labels(**self.labels).inc(state.cached_tokens)
        finish = state.finish_reason
        if finish is None or (finish.kind is FinishKind.ABORT and not finish.is_error):
            self.num_aborted.labels(**self.labels).inc()
        elif finish.is_error:
            self.num_failed.labels(**self.labels, code=str(finish.status_code)).inc()
        else:
            self.e2e.labels(**self.labels).observe(time.time() - state.created)

    def on_engine_restart(self) -> None:
        self.engine_restarts.labels(**self.labels).inc()

    # ---- scrape ----------------------------------------------------------------------------------
    def set_engine_state(self, state: dict[str, Any]) -> None:
        """The engine gauges from its internal state (``EngineCore.internal_state``)."""
        used = state.get("num_used_tokens", 0)
        total = used + state.get("num_free_tokens", 0) + state.get("num_evictable_tokens", 0)
        hits, misses = state.get("cache_hit_tokens", 0), state.get("cache_miss_tokens", 0)
        values = {
            "num_running_reqs": state.get("num_running_reqs", 0),
            "num_queue_reqs": state.get("num_waiting_reqs", 0)
            + state.get("num_grammar_waiting", 0),
            "token_usage": used / total if total else 0.0,
            "cache_hit_rate": hits / (hits + misses) if hits + misses else 0.0,
            "gen_throughput": state.get("last_gen_throughput", 0.0),
        }
        for name, value in values.items():
            self.gauges[name].labels(**self.engine_label_values).set(value)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
