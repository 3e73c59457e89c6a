"""Headless locust against a gateway this script starts, with plots of what happened.

    .venv/bin/python loadtests/run_locust.py --shape diurnal --duration 240 [--config ...]

Starts ``serving run`` on ``--config`` (configs/hybrid.yaml) on free 127.0.0.1 ports, waits
until it is ready, runs ``loadtests/locustfile.py`` headless in open loop with the chosen
shape (``loadtests/shapes.py``) and SLO mix, and scrapes the gateway's ``/metrics`` every
second meanwhile, printing a progress line every few seconds. Writes to
``loadtests/results/locust-<shape>/``: locust's HTML report and CSVs, the per-request
records, the scrapes, ``summary.json`` and PNGs over time: offered and good requests/s per
class, attainment per class, p99 latency per class, replicas per pool (running and target),
cumulative $ per pool, mean batch size per pool, and all six in ``overview.png``
(``--replot`` redraws them from a run's saved records and scrapes).
Bounded in time; stops locust and the gateway by their PIDs.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx
import matplotlib
import yaml
from prometheus_client.parser import text_string_to_metric_families

from loadtests import shapes
from loadtests.harness import RESULTS, ROOT, Server, free_port
from serving import processes
from serving.config import DEFAULT_SLO_CLASSES

matplotlib.use("Agg")  # files only: no display on a server
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)

SCRAPE_S = 1.0
PRINT_S = 5.0
Scrape = dict[str, dict[str, float]]  # series -> "pool" or "pool|state" -> value


def document(config: Path, http_port: int, grpc_port: int) -> tuple[dict, dict[str, float]]:
    """The config with its ports moved to free ones on 127.0.0.1; its SLO deadlines (ms)."""
    doc = yaml.safe_load(config.read_text())
    doc.setdefault("http_options", {}).update(host="127.0.0.1", port=http_port)
    doc.setdefault("grpc_options", {})["port"] = grpc_port
    args = doc["applications"][0].get("args", {})
    classes = args.get("slo_classes") or {n: c.model_dump() for n, c in
                                          DEFAULT_SLO_CLASSES.items()}
    return doc, {name: float(spec["latency_ms"]) for name, spec in classes.items()}


def scrape(url: str) -> Scrape:
    """The gateway's pool series, summed over models: replicas by state, $, batch rows."""
    out: Scrape = defaultdict(dict)
    try:
        text = httpx.get(f"{url}/metrics", timeout=2).text
    except httpx.HTTPError:
        return out
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels, key = sample.labels, None
            if sample.name == "serving_pool_replicas":
                key = ("replicas", f"{labels['pool']}|{labels['state']}")
            elif sample.name == "serving_cost_dollars_total":
                key = ("dollars", labels["pool"])
            elif sample.name in ("serving_batch_size_rows_sum", "serving_batch_size_rows_count"):
                key = (sample.name.rsplit("_", 1)[1], labels["pool"])
            if key is not None:
                out[key[0]][key[1]] = out[key[0]].get(key[1], 0.0) + sample.value
    return out


class Records:
    """The locustfile's per-request CSV, read as it grows (whole lines only)."""

    def __init__(self, path: Path) -> None:
        self.path, self.rows, self._partial = path, [], ""
        self._handle: Any = None

    def poll(self) -> list[dict[str, Any]]:
        if self._handle is None:
            if not self.path.exists():
                return []
            self._handle = self.path.open()
        text = self._partial + self._handle.read()
        lines = text.split("\n")
        self._partial = lines.pop()
        new = [dict(zip(("start", "protocol", "slo_class", "onprem", "ok", "latency_ms",
                         "good"), line.split(","), strict=True))
               for line in lines if line and not line.startswith("start,")]  # the header
        for row in new:
            for field in ("start", "latency_ms"):
                row[field] = float(row[field])
            for field in ("onprem", "ok", "good"):
                row[field] = row[field] == "1"
        self.rows += new
        return new


def progress(elapsed: float, target: float, new: list[dict], window: float, last: Scrape) -> str:
    replicas = last.get("replicas", {})
    pools = sorted({key.split("|")[0] for key in replicas})
    counts = " ".join(f"{pool} {replicas.get(f'{pool}|running', 0):.0f}/"
                      f"{replicas.get(f'{pool}|target', 0):.0f}" for pool in pools)
    good = sum(row["good"] for row in new)
    return (f"{elapsed:5.0f} s  offered {target:6.1f} rps  answered {len(new) / window:6.1f}  "
            f"good {good / window:6.1f} rps  replicas running/target: {counts}")


def run(args: argparse.Namespace, out: Path) -> tuple[list[dict], list[tuple[float, Scrape]],
                                                      dict[str, float], float]:
    http_port, grpc_port = free_port(), free_port()
    doc, deadlines = document(args.config, http_port, grpc_port)
    (out / "records.csv").unlink(missing_ok=True)  # a past run's would be read as this one's
    records = Records(out / "records.csv")
    scrapes: list[tuple[float, Scrape]] = []
    env = {**os.environ, "SHAPE": args.shape, "BENCH_MODEL": args.model,
           "LOAD_PEAK_RPS": str(args.peak_rps), "LOAD_SECONDS": str(args.duration),
           "LOAD_SEED": str(args.seed), "LOAD_MIX": args.mix,
           "LOAD_ONPREM_SHARE": str(args.onprem_share), "LOAD_GRPC_SHARE": str(args.grpc_share),
           "LOAD_GRPC_HOST": f"127.0.0.1:{grpc_port}", "LOAD_SLO_MS": json.dumps(deadlines),
           "LOAD_RECORDS": str(out / "records.csv")}
    env.pop("BENCH_SLO_CLASS", None)  # the mix decides the classes here
    with Server(f"gateway-{args.shape}", doc, out) as url:
        command = [sys.executable, "-m", "locust", "-f", str(ROOT / "loadtests/locustfile.py"),
                   "--headless", "--host", url, "--html", str(out / "report.html"),
                   "--csv", str(out / "locust"), "-t", f"{args.duration + 5:.0f}s",
                   "--stop-timeout", "5", "--loglevel", "WARNING", "--only-summary"]
        print(f"gateway {url} (gRPC :{grpc_port}) ready; locust {args.shape} for "
              f"{args.duration:.0f} s, peak {args.peak_rps:g} rps", flush=True)
        start = time.time()
        with (out / "locust.log").open("wb") as log:
            locust = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log,
                                      stderr=subprocess.STDOUT)
            try:
                window: list[dict] = []
                next_print = start + PRINT_S
                while locust.poll() is None and time.time() - start < args.duration + 30:
                    scrapes.append((time.time(), scrape(url)))
                    window += records.poll()
                    if time.time() >= next_print:
                        elapsed = time.time() - start
                        target = shapes.rate(args.shape, elapsed, args.peak_rps, args.duration,
                                             args.seed) if elapsed < args.duration else 0.0
                        print(progress(elapsed, target, window, PRINT_S, scrapes[-1][1]),
                              flush=True)
                        window, next_print = [], next_print + PRINT_S
                    time.sleep(max(0.0, SCRAPE_S - (time.time() - scrapes[-1][0])))
            finally:
                if locust.poll() is None:  # past its shape's end (or interrupted): SIGINT,
                    print("stopping locust", flush=True)  # it still writes its report
                processes.stop(locust, grace_s=20)
        scrapes.append((time.time(), scrape(url)))
    records.poll()
    return records.rows, scrapes, deadlines, start


# ---- plots -----------------------------------------------------------------------------

def binned(rows: list[dict], start: float, seconds: float, bin_s: float,
           classes: list[str]) -> dict[str, Any]:
    """Per class and bin (by send time): offered, good, attainment, p99 of answered. The
    few sends after the shape's end (its last tick) would make a last, almost empty bin."""
    count = math.ceil(seconds / bin_s)
    by: dict[str, list[list[dict]]] = {c: [[] for _ in range(count)] for c in classes}
    for row in rows:
        index = int(max(0.0, row["start"] - start) // bin_s)
        if row["slo_class"] in by and index < count:
            by[row["slo_class"]][index].append(row)
    series: dict[str, Any] = {"t": [(i + 0.5) * bin_s for i in range(count)]}
    for name, bins in by.items():
        offered = [len(b) for b in bins]
        good = [sum(r["good"] for r in b) for b in bins]
        latencies = [sorted(r["latency_ms"] for r in b if r["ok"]) for b in bins]
        series[name] = {
            "offered": [n / bin_s for n in offered],
            "good": [g / bin_s for g in good],
            "attainment": [g / n if n else float("nan") for g, n in zip(good, offered,
                                                                        strict=True)],
            "p99": [ls[min(len(ls) - 1, int(0.99 * len(ls)))] if ls else float("nan")
                    for ls in latencies],
        }
    return series


def pool_series(scrapes: list[tuple[float, Scrape]], start: float, bin_s: float) -> dict:
    """Replicas (running, target), cumulative $ and mean batch rows per pool over time."""
    t = [at - start for at, _ in scrapes]
    pools = sorted({key.split("|")[0] for _, s in scrapes for key in s.get("replicas", {})}
                   | {pool for _, s in scrapes for pool in s.get("dollars", {})})
    first = scrapes[0][1].get("dollars", {}) if scrapes else {}
    lag = max(1, round(bin_s / SCRAPE_S))  # batch size over a bin, not one noisy second
    out: dict[str, Any] = {"t": t, "pools": {}}
    for pool in pools:
        rows = [s.get("sum", {}).get(pool, 0.0) for _, s in scrapes]
        batches = [s.get("count", {}).get(pool, 0.0) for _, s in scrapes]
        mean = [(rows[i] - rows[i - lag]) / (batches[i] - batches[i - lag])
                if i >= lag and batches[i] > batches[i - lag] else float("nan")
                for i in range(len(scrapes))]
        out["pools"][pool] = {
            "running": [s.get("replicas", {}).get(f"{pool}|running", 0.0) for _, s in scrapes],
            "target": [s.get("replicas", {}).get(f"{pool}|target", 0.0) for _, s in scrapes],
            "dollars": [s.get("dollars", {}).get(pool, 0.0) - first.get(pool, 0.0)
                        for _, s in scrapes],
            "batch_rows": mean,
        }
    return out


def draw(panel: str, ax: Any, client: dict, pools: dict, deadlines: dict,
         target: list[float]) -> None:
    colors = dict(zip(deadlines, plt.rcParams["axes.prop_cycle"].by_key()["color"],
                      strict=False))
    t = client["t"]
    if panel == "rates":
        ax.plot(t, target, color="grey", lw=2, alpha=0.6, label="shape target, all")
        ax.plot(t, [sum(client[n]["offered"][i] for n in deadlines) for i in range(len(t))],
                "--", color="black", lw=1, label="offered, all")
        ax.plot(t, [sum(client[n]["good"][i] for n in deadlines) for i in range(len(t))],
                color="black", lw=1, label="good, all")
        for name in deadlines:
            ax.plot(t, client[name]["offered"], "--", color=colors[name], label=f"{name} offered")
            ax.plot(t, client[name]["good"], color=colors[name], label=f"{name} good")
        ax.set_ylabel("requests/s")
    elif panel == "attainment":
        for name in deadlines:
            ax.plot(t, client[name]["attainment"], color=colors[name], label=name)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("good / offered")
    elif panel == "p99":
        for name, ms in deadlines.items():
            ax.plot(t, client[name]["p99"], color=colors[name], label=f"{name} p99")
            ax.axhline(ms, ls=":", color=colors[name], lw=1)
        ax.set_yscale("log")
        ax.set_ylabel("p99 latency, ms (dotted: deadline)")
    else:
        for index, (pool, series) in enumerate(pools["pools"].items()):
            color = f"C{index + 3}"
            if panel == "replicas":
                ax.step(pools["t"], series["running"], where="post", color=color,
                        label=f"{pool} running")
                ax.step(pools["t"], series["target"], "--", where="post", color=color,
                        label=f"{pool} target")
            elif panel == "dollars":
                ax.plot(pools["t"], series["dollars"], color=color, label=pool)
            else:
                ax.plot(pools["t"], series["batch_rows"], color=color, label=pool)
        ax.set_ylabel({"replicas": "replicas (all models)", "dollars": "$ since start",
                       "batch": "mean rows per batch"}[panel])
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="upper left")


PANELS = {"rates": "Offered and good requests/s per class", "attainment": "SLO attainment",
          "p99": "p99 latency per class", "replicas": "Replicas per pool",
          "dollars": "Cumulative $ per pool", "batch": "Mean batch size per pool"}


def plot(out: Path, title: str, client: dict, pools: dict, deadlines: dict,
         target: list[float]) -> list[Path]:
    files = []
    for panel, heading in PANELS.items():
        fig, ax = plt.subplots(figsize=(9, 3.6))
        draw(panel, ax, client, pools, deadlines, target)
        ax.set_title(f"{heading} — {title}", fontsize=10)
        ax.set_xlabel("seconds")
        fig.tight_layout()
        files.append(out / f"{panel}.png")
        fig.savefig(files[-1], dpi=110)
        plt.close(fig)
    fig, axes = plt.subplots(len(PANELS), 1, figsize=(10, 2.6 * len(PANELS)), sharex=True)
    for ax, (panel, heading) in zip(axes, PANELS.items(), strict=True):
        draw(panel, ax, client, pools, deadlines, target)
        ax.set_title(heading, fontsize=9)
    axes[-1].set_xlabel("seconds since the load started")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    files.append(out / "overview.png")
    fig.savefig(files[-1], dpi=100)
    plt.close(fig)
    return files


def summarise(rows: list[dict], pools: dict, deadlines: dict, seconds: float) -> dict:
    classes = {}
    for name in deadlines:
        mine = [r for r in rows if r["slo_class"] == name]
        latencies = sorted(r["latency_ms"] for r in mine if r["ok"])
        classes[name] = {
            "offered": len(mine), "good": sum(r["good"] for r in mine),
            "errors": sum(not r["ok"] for r in mine),
            "attainment": sum(r["good"] for r in mine) / len(mine) if mine else None,
            "p99_ms": latencies[int(0.99 * (len(latencies) - 1))] if latencies else None}
    good = sum(c["good"] for c in classes.values())
    dollars = {pool: s["dollars"][-1] if s["dollars"] else 0.0
               for pool, s in pools["pools"].items()}
    return {"seconds": seconds, "requests": len(rows), "good": good,
            "grpc_requests": sum(r["protocol"] == "grpc" for r in rows),
            "onprem_requests": sum(r["onprem"] for r in rows), "classes": classes,
            "dollars": dollars,
            "dollars_per_1k_good": 1000 * sum(dollars.values()) / good if good else None,
            "max_replicas_running": {pool: max(s["running"], default=0)
                                     for pool, s in pools["pools"].items()}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "hybrid.yaml")
    parser.add_argument("--shape", default=os.environ.get("SHAPE", "step"),
                        choices=shapes.SHAPES)
    parser.add_argument("--duration", type=float, default=90, help="seconds of load")
    parser.add_argument("--peak-rps", type=float, default=100, help="the shape's peak")
    parser.add_argument("--model", default="digits")
    parser.add_argument("--mix", default="realtime=70,standard=20,batch=10")
    parser.add_argument("--onprem-share", type=float, default=0.05)
    parser.add_argument("--grpc-share", type=float, default=0.2, help="of the users")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bin-s", type=float, default=5, help="plot resolution, seconds")
    parser.add_argument("--out", type=Path, help="default loadtests/results/locust-<shape>")
    parser.add_argument("--replot", action="store_true",
                        help="only redraw the figures of the run in --out (same arguments)")
    args = parser.parse_args()
    out = args.out or RESULTS / f"locust-{args.shape}"
    out.mkdir(parents=True, exist_ok=True)
    if args.replot:  # figures again from a run's saved records and scrapes, no server
        rows = Records(out / "records.csv").poll()
        saved = json.loads((out / "scrapes.json").read_text())
        start, scrapes = saved["start"], [(at, s) for at, s in saved["scrapes"]]
        deadlines = document(args.config, 0, 0)[1]
    else:
        rows, scrapes, deadlines, start = run(args, out)
        (out / "scrapes.json").write_text(json.dumps({"start": start, "scrapes": scrapes}))
    if not rows:
        raise SystemExit(f"no requests recorded; see {out / 'locust.log'}")
    client = binned(rows, start, args.duration, args.bin_s, list(deadlines))
    pools = pool_series(scrapes, start, args.bin_s)
    # The shape's mean over each plotted bin, comparable with the offered rate in that bin.
    steps = 20
    target = [sum(shapes.rate(args.shape, mid + (k / steps - 0.5) * args.bin_s, args.peak_rps,
                              args.duration, args.seed) for k in range(steps)) / steps
              if mid < args.duration else float("nan") for mid in client["t"]]
    title = (f"locust {args.shape}, peak {args.peak_rps:g} rps, {args.duration:.0f} s, "
             f"{args.config.name}")
    files = plot(out, title, client, pools, deadlines, target)
    summary = summarise(rows, pools, deadlines, args.duration)
    (out / "summary.json").write_text(json.dumps({"args": {k: str(v) for k, v in
                                                           vars(args).items()},
                                                  **summary}, indent=1))
    with (out / "series.csv").open("w", newline="") as handle:  # the plotted client series
        writer = csv.writer(handle)
        writer.writerow(["t", *(f"{c}_{k}" for c in deadlines
                                for k in ("offered", "good", "attainment", "p99"))])
        for i, t in enumerate(client["t"]):
            writer.writerow([t, *(client[c][k][i] for c in deadlines
                                  for k in ("offered", "good", "attainment", "p99"))])
    print(json.dumps(summary, indent=1))
    print(f"report: {out / 'report.html'}")
    for path in files:
        print(f"figure: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
