"""Expose the backend's decode statistics through SGLang's own introspection paths:
- GET /get_server_info -> internal_states[i]["asynctls"] (Engine.get_server_info() alike);
- with --enable-metrics, SGLang's Prometheus endpoint (GET /metrics): every number of that
  snapshot as a gauge ``asynctls:<key>`` (nested keys joined by "_", e.g.
  ``asynctls:offload_hit_rate``, ``asynctls:offload_bytes_per_step``), refreshed at SGLang's decode
  log interval (--decode-log-interval steps) with SGLang's labels.
The snapshot reads device counters, which syncs: on request, or once per log interval with metrics
on, never per step."""
from __future__ import annotations

import re

from sglang.srt.plugins.hook_registry import HookRegistry, HookType


def _snapshot(scheduler) -> dict | None:
    """The asynctls backend's statistics in this scheduler process, or None (another backend)."""
    try:
        runner = scheduler.tp_worker.model_runner
    except AttributeError:
        return None
    for backend in (runner.attn_backend, getattr(runner.attn_backend, "decode_backend", None)):
        if backend is not None and hasattr(backend, "asynctls_snapshot"):
            return backend.asynctls_snapshot()
    return None


def _internal_state(original, self, *args, **kwargs):
    ret = original(self, *args, **kwargs)
    snap = _snapshot(self)
    if snap is not None:
        state = ret.internal_state if hasattr(ret, "internal_state") else ret
        state["asynctls"] = snap
    return ret


def flatten(snap: dict, prefix: str = "") -> dict[str, float]:
    """The numbers of a (nested) snapshot by Prometheus-safe name (booleans, strings, None left out)."""
    out: dict[str, float] = {}
    for key, value in snap.items():
        name = re.sub(r"[^a-zA-Z0-9_]", "_", f"{prefix}{key}")
        if isinstance(value, dict):
            out.update(flatten(value, name + "_"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = float(value)
    return out


_GAUGES: dict = {}


def _export(result, self, *args, **kwargs):
    """AFTER SchedulerMetricsReporter.report_decode_stats: at the log interval, with metrics on,
    the backend's numbers go to SGLang's Prometheus registry (multiprocess mode, like SGLang's own)."""
    if not getattr(self, "current_scheduler_metrics_enabled", False) or \
            self.forward_ct_decode % self.decode_log_interval != 0:
        return result
    snap = _snapshot(self.scheduler)
    if snap is None:
        return result
    from prometheus_client import Gauge

    labels = dict(getattr(self.metrics_collector, "labels", None) or {})
    for name, value in flatten(snap).items():
        gauge = _GAUGES.get(name)
        if gauge is None:
            gauge = _GAUGES[name] = Gauge(f"asynctls:{name}", f"asynctls backend statistic {name} (see docs)",
                                          labelnames=list(labels), multiprocess_mode="mostrecent")
        (gauge.labels(**labels) if labels else gauge).set(value)
    return result


def apply() -> None:
    HookRegistry.register("sglang.srt.managers.scheduler.Scheduler.get_internal_state", _internal_state,
                          HookType.AROUND)
    HookRegistry.register("sglang.srt.managers.scheduler_components.metrics_reporter.SchedulerMetricsReporter"
                          ".report_decode_stats", _export, HookType.AFTER)
