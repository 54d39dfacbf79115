"""A fixed status snapshot: the dashboard's SVG snapshot test and docs/dashboard.svg use it.

It covers every health state and both sink types, with values chosen to
exercise the formatting (thousands, ages in minutes and hours, an S3 open
file, a long last error). Regenerate the docs screenshot with
`python -m eventstreamd.tui.sample docs/dashboard.svg`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

SOCKET_LABEL = "/var/lib/eventstreamd/control.sock"
SIZE = (160, 24)


def _integration(**values: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "kind": "webhook", "integration_type": "permanent", "status": "running",
        "health": "ok", "lag_seconds": None, "delivered": 0, "delivered_rate": 0.0,
        "delivered_history": [], "failures": 0, "last_error": None, "last_error_age": None,
        "last_error_cause": None,
        "in_flight": 0, "crashes": 0, "rejected_events": 0, "buffered_bytes": None,
        "buffered_age": None, "restart_in": None, "max_rate": None, "ordering": None,
        "auto_stopped": False, "stop_reason": None,
    }
    return {**base, **values}


SNAPSHOT: dict[str, Any] = {
    "time": 1_717_243_200.0,
    "daemon": {"version": "0.1.0", "pid": 4242, "uptime": 86_400.0},
    "head": 482_215,
    "ingest_rate": 190.3,
    "ingest_history": [120.0, 135.5, 150.2, 170.0, 210.4, 260.1, 240.8, 205.3, 180.0, 175.6,
                       190.3, 220.0, 230.5, 198.7, 185.2, 190.3],
    "integrations": [
        _integration(
            id="analytics", target="collector.example.net/v1/events", cursor=463_694,
            lag_events=18_522, lag_seconds=245.0, delivered=120_551, delivered_rate=45.2,
            delivered_history=[44.0, 46.1, 45.0, 43.2, 47.8, 45.1, 44.9, 45.6, 46.0, 45.2],
            in_flight=8, health="lagging"),
        _integration(
            id="legacy-crm", target="crm.acme.example:8443/hooks", cursor=477_096, lag_events=5_120,
            lag_seconds=7_380.0, status="stopped", health="stopped", delivered=None,
            delivered_rate=0.0, failures=None, in_flight=None, crashes=None,
            rejected_events=3, auto_stopped=True,
            stop_reason=("Every delivery attempt failed for 5d (since "
                         "2024-05-27T12:00:00.000Z); stopped automatically. Last error: "
                         "Request to URL https://crm.acme.example:8443/hooks failed. Reason: "
                         "Service Unavailable (HTTP status code 503).")),
        _integration(
            id="orders-webhook", target="hooks.example.com/orders", cursor=482_213, lag_events=3,
            lag_seconds=0.4, delivered=301_877, delivered_rate=182.5,
            delivered_history=[110.0, 131.2, 148.9, 169.5, 208.8, 258.0, 239.1, 204.4,
                               178.7, 182.5],
            in_flight=1, rejected_events=2, ordering="key order_id"),
        _integration(
            id="returns-erp", target="erp.acme.internal/hooks", cursor=481_011, lag_events=1_205,
            lag_seconds=192.3, delivered=88_310, delivered_rate=0.0,
            delivered_history=[12.0, 8.5, 3.1, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
            failures=37, health="failing", in_flight=8, last_error_age=0.8, max_rate=20.0,
            ordering="strict",
            last_error=("Request to URL https://erp.acme.internal/hooks failed. Reason: "
                        "cannot connect (Connection refused) (HTTP status code none). "
                        "Payload: {\"tenant\":\"acme\",\"name\":\"return.processed\"}"),
            last_error_cause="cannot connect (Connection refused)"),
        _integration(
            id="s3-archive", kind="s3", target="s3://acme-archive/events", cursor=479_875,
            lag_events=2_341, lag_seconds=100.2, delivered=477_500, delivered_rate=39.8,
            delivered_history=[0.0, 0.0, 0.0, 0.0, 2_390.0, 0.0, 0.0, 0.0, 0.0, 0.0],
            in_flight=None, buffered_bytes=1_887_436, buffered_age=100.2),
    ],
}


async def save_dashboard_svg(target: Path) -> None:
    from .app import DashboardApp

    app = DashboardApp(SOCKET_LABEL, snapshot=SNAPSHOT)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        app.save_screenshot(filename=target.name, path=str(target.parent.resolve()))


if __name__ == "__main__":
    import asyncio

    asyncio.run(save_dashboard_svg(Path(sys.argv[1] if len(sys.argv) > 1 else "dashboard.svg")))
