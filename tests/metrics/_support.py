"""Reading what an OpenTelemetry in-memory reader collected, by metric name."""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from pgreservoir import flush_metrics

POOL = "db.client.connection.pool.name"
STATE = "db.client.connection.state"

#: Every metric of the semantic conventions, with its unit and kind.
EXPECTED = {
    "db.client.connection.count": ("{connection}", "Sum"),
    "db.client.connection.idle.max": ("{connection}", "Sum"),
    "db.client.connection.idle.min": ("{connection}", "Sum"),
    "db.client.connection.max": ("{connection}", "Sum"),
    "db.client.connection.pending_requests": ("{request}", "Sum"),
    "db.client.connection.timeouts": ("{timeout}", "Sum"),
    "db.client.connection.wait_time": ("s", "Histogram"),
    "db.client.connection.use_time": ("s", "Histogram"),
    "db.client.connection.create_time": ("s", "Histogram"),
}


class Collected:
    """One collection: metric name -> (unit, kind, monotonic, [(attributes, point)])."""

    def __init__(self, reader: InMemoryMetricReader, *, flush: bool = False) -> None:
        if flush:
            flush_metrics()
        self.metrics: Dict[str, Tuple[str, str, Any, List[Tuple[Dict[str, Any], Any]]]] = {}
        self.scopes: List[str] = []
        data = reader.get_metrics_data()
        assert data is not None
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                self.scopes.append(scope.scope.name)
                for metric in scope.metrics:
                    points = [(dict(p.attributes or {}), p) for p in metric.data.data_points]
                    monotonic = getattr(metric.data, "is_monotonic", None)
                    self.metrics[metric.name] = (
                        metric.unit or "",
                        type(metric.data).__name__,
                        monotonic,
                        points,
                    )

    def point(self, name: str, pool: str, **attributes: str) -> Any:
        """The data point of metric ``name`` for ``pool`` (and the attributes)."""
        want = {POOL: pool, **{STATE if k == "state" else k: v for k, v in attributes.items()}}
        found = [p for attrs, p in self.metrics[name][3] if attrs == want]
        assert len(found) == 1, (name, want, self.metrics.get(name))
        return found[0]

    def value(self, name: str, pool: str, **attributes: str) -> Any:
        return self.point(name, pool, **attributes).value

    def pools(self, name: str) -> List[str]:
        return sorted({attrs[POOL] for attrs, _ in self.metrics.get(name, ("", "", None, []))[3]})
