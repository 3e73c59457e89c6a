"""MiniLM throughput: the gateway vs raw in-process ONNX Runtime on the same threads.

    python loadtests/bench_minilm.py [--seconds 20] [--clients 32]

Raw: one ``InferenceSession`` with the quickstart pool's ``intra_op_num_threads`` at its best
batch size (sequence 32). Gateway: ``serving run`` with minilm, closed-loop locust clients
each sending one 32-token sentence (binary OIP), so throughput depends on the gateway
forming batches. Prints rows/s for both and the ratio (target ≥ 0.9).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from loadtests.harness import (
    RESULTS,
    ROOT,
    Server,
    best_batch_rate,
    free_port,
    gateway_config,
    run_locust,
)

SEQUENCE = 32


def raw_rate(threads: int, seconds: float = 6.0) -> dict[str, float]:
    rng = np.random.default_rng(0)

    def feeds(batch: int) -> dict[str, np.ndarray]:
        ids = rng.integers(1000, 20000, (batch, SEQUENCE), dtype=np.int64)
        return {"input_ids": ids, "attention_mask": np.ones_like(ids)}

    return best_batch_rate(
        ROOT / "models/minilm/1/model.onnx", threads, feeds, (1, 4, 8, 16, 32, 64), seconds
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--clients", type=int, default=32)
    args = parser.parse_args()
    pool = yaml.safe_load((ROOT / "configs/quickstart.yaml").read_text())["applications"][0][
        "args"
    ]["pools"]["onprem-cpu"]
    threads = pool["intra_op_num_threads"]
    raw = raw_rate(threads)
    with tempfile.TemporaryDirectory(prefix="bench-minilm-") as tmp:
        port = free_port()
        with Server("gateway", gateway_config(port, ["minilm"]), Path(tmp)):
            run_locust(port, 4, 5, Path(tmp), model="minilm")  # warm-up
            gateway = run_locust(port, args.clients, args.seconds, Path(tmp), model="minilm")
    ratio = gateway["rps"] / raw["rows_per_s"]
    lines = [
        f"minilm, sequence {SEQUENCE}, {threads} ORT thread(s), {args.clients} closed-loop "
        f"clients, {args.seconds}s",
        "",
        "| system | rows/s | p50 ms | p99 ms | failures |",
        "|---|---|---|---|---|",
        f"| raw onnxruntime (batch {raw['batch']}) | {raw['rows_per_s']:.1f} | – | – | – |",
        f"| gateway | {gateway['rps']:.1f} | {gateway['p50_ms']:.0f} | "
        f"{gateway['p99_ms']:.0f} | {gateway['failures']} |",
        "",
        f"gateway ÷ raw = {ratio:.2f} (target ≥ 0.9)",
    ]
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (RESULTS / f"minilm-{stamp}.json").write_text(
        json.dumps({"raw": raw, "gateway": gateway, "ratio": ratio, "args": vars(args)}, indent=2)
    )
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
