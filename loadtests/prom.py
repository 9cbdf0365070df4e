"""The server's own view, from `GET /metrics`: scraped before and after a run, the difference set beside the
client's figures. Only the exposition's metric names are relied on, the series a Prometheus scrape sees."""

from __future__ import annotations

import math

import httpx
from prometheus_client.parser import text_string_to_metric_families

__all__ = ["crosscheck", "delta", "histogram_quantile", "parse", "scrape"]

P = "lfm_audio_"
HISTOGRAMS = {  # our name -> (metric family, label filter)
    "ttfa_speech_end_s": (P + "time_to_first_audio_seconds", {"since": "speech_end"}),
    "ttfa_commit_s": (P + "time_to_first_audio_seconds", {"since": "commit"}),
    "ttft_s": (P + "time_to_first_text_seconds", {}),
    "rtf": (P + "real_time_factor_ratio", {}),
}
COUNTERS = {
    "underruns": (P + "underruns_total", {}),
    "gap_s": (P + "playback_gap_seconds_total", {}),
    "rejections": (P + "rejected_sessions_total", {"reason": "full"}),
    "interruptions": (P + "interruptions_total", {}),
    "sessions": (P + "sessions_total", {}),
    "errors": (P + "errors_total", {}),
    "speculative_starts": (P + "speculative_starts_total", {}),  # 0 from a server without speculative start
    "speculative_hits": (P + "speculative_hits_total", {}),
    "speculative_drops": (P + "speculative_drops_total", {}),
}


def scrape(base: str, timeout_s: float = 10.0) -> dict:
    response = httpx.get(base + "/metrics", timeout=timeout_s)
    response.raise_for_status()
    return parse(response.text)


def parse(text: str) -> dict:
    """{name: value} for counters, {name: {"buckets": [(le, count)], "sum", "count"}} for histograms."""
    samples = [s for family in text_string_to_metric_families(text) for s in family.samples]

    def matching(name: str, labels: dict) -> list:
        return [s for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]

    out: dict = {}
    for key, (name, labels) in COUNTERS.items():
        out[key] = sum(s.value for s in matching(name, labels))  # summed over the labels not filtered on
    for key, (name, labels) in HISTOGRAMS.items():
        buckets = sorted((float(s.labels["le"]), s.value) for s in matching(name + "_bucket", labels))
        out[key] = {"buckets": buckets, "sum": sum(s.value for s in matching(name + "_sum", labels)),
                    "count": sum(s.value for s in matching(name + "_count", labels))}
    return out


def delta(after: dict, before: dict | None) -> dict:
    """What happened between two scrapes (a server shared by several runs keeps counting)."""
    if before is None:
        return after
    out: dict = {}
    for key, value in after.items():
        if isinstance(value, dict):
            old = dict(before[key]["buckets"])
            out[key] = {"buckets": [(le, n - old.get(le, 0.0)) for le, n in value["buckets"]],
                        "sum": value["sum"] - before[key]["sum"], "count": value["count"] - before[key]["count"]}
        else:
            out[key] = value - before[key]
    return out


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """Prometheus' estimate: linear inside the bucket holding the q-th observation (cumulative counts)."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower_le, lower_n = 0.0, 0.0
    for le, n in buckets:
        if n >= rank:
            if math.isinf(le):
                return lower_le  # beyond the last finite bound: the bound is all that is known
            return lower_le + (le - lower_le) * ((rank - lower_n) / (n - lower_n) if n > lower_n else 1.0)
        lower_le, lower_n = le, n
    return lower_le


def crosscheck(server: dict, client: dict) -> list[dict]:
    """Rows of (figure, client, server): counts, means and the p50/p95 the server's buckets allow."""
    rows = []
    for key in HISTOGRAMS:
        h = server[key]
        c = client[key]
        rows.append({"figure": key, "stat": "count", "client": c["count"], "server": h["count"]})
        rows.append({"figure": key, "stat": "mean", "client": c["mean"],
                     "server": h["sum"] / h["count"] if h["count"] else None})
        for q in (0.5, 0.95):
            rows.append({"figure": key, "stat": f"p{round(q * 100)}", "client": c[f"p{round(q * 100)}"],
                         "server": histogram_quantile(q, h["buckets"])})
    rows.append({"figure": "underruns", "stat": "count", "client": client["underruns"],
                 "server": server["underruns"]})
    rows.append({"figure": "gap_s", "stat": "total", "client": client["gap_s"], "server": server["gap_s"]})
    rows.append({"figure": "rejections", "stat": "count", "client": client["rejections"],
                 "server": server["rejections"]})
    rows.append({"figure": "interruptions", "stat": "count", "client": client["cancelled"],
                 "server": server["interruptions"]})
    rows.append({"figure": "sessions", "stat": "count", "client": client["sessions"], "server": server["sessions"]})
    return rows
