#!/usr/bin/env python3
"""The report code of compare_etcd.py (summarize, evaluate_targets, markdown,
the JSON dump) on synthetic results, without a cluster or a benchmark: a run
with --fill-keys 0 (it used to end in KeyError: 'rss_nodes' after the whole
matrix had run), a run with a fill, and a run that failed during the fill.

Usage: compare_etcd_report_test.py [DIR holding compare_etcd.py]"""
import json
import os
import sys

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(__file__))
import compare_etcd as ce  # noqa: E402

CELLS = ["put-64", "get-lin-256"]


def nodes(mib):
    return {"node1": mib, "node2": mib + 10, "node3": mib + 20}


def make_report(fill_keys, fill_done=True, failure=None, apis=("batch",)):
    """What main() has in hand when it writes the report."""
    runs = []
    for name in CELLS:
        # Tessera's batch runs do 4000 ops/s, its unary ones 2000; etcd 1500.
        for system, api, ops in (("tessera", "batch", 4000.0), ("tessera", "unary", 2000.0),
                                 ("etcd", "unary", 1500.0)):
            if system == "tessera" and api not in apis:
                continue
            runs.append({"label": name, "system": system, "api": api, "ok": True,
                         "cpu_s_per_kop": 0.5, "repeat": 1, "order": 1,
                         "bench": {"ops_per_sec": ops, "p50_ms": 1.0, "p99_ms": 5.0,
                                   "ops": 10 * ops, "errors": 0, "misses": 0}})
    memory = {"fill_keys": fill_keys}
    for system in ce.SYSTEMS:  # as measure() records it before the fill
        memory[system] = {"hwm_matrix_nodes": nodes(100.0), "hwm_matrix_max": 120.0}
    if fill_keys > 0:
        memory["etcd_compacted_revision"] = 12345
        for system in ce.SYSTEMS:
            memory[system].update(fill_ops_per_sec=9000.0, fill_cpu_s_per_kop=0.3)
            if fill_done:
                memory[system].update(rss_nodes=nodes(200.0), hwm_fill_nodes=nodes(250.0),
                                      rss_mean=210.0, rss_max=220.0, hwm_fill_max=270.0)
        if fill_done:
            memory.update(ratio_mean=1.0, ratio_max=1.0)
    report = {"meta": {"date": "today", "cpu_model": "cpu", "cores": 2, "ram_gib": 24.0,
                       "kernel": "6.1", "etcd_version": "3.4.23", "git_commit": "abc",
                       "data_fs": "ext4", "data_dir": "/data", "loadavg_start": "0.1",
                       "loadavg_end": "0.2"},
              "config": {"duration_s": 1.0, "warmup_s": 0.5, "repeats": 1, "key_space": 2000,
                         "fill_keys": fill_keys, "cells": CELLS, "shards": 8, "conns": 2,
                         "tessera_apis": list(apis),
                         "seed": 1, "smoke": False},
              "fills": [], "runs": runs, "cells": [], "memory": memory, "targets": []}
    report["cells"] = ce.summarize(CELLS, report["runs"], apis)
    report["targets"] = ce.evaluate_targets(report["cells"], report["memory"])
    report["failure"] = failure
    json.dumps(report)
    return ce.markdown(report), report


def rss_target_line(text):
    """The row of the RSS target in the targets table."""
    targets = text[text.index("## Targets"):]
    return next(line for line in targets.splitlines() if line.startswith("| RSS per node"))


def main():
    failures = []

    def check(what, ok):
        if not ok:
            failures.append(what)

    text, _ = make_report(fill_keys=0)
    memory = text[text.index("## Memory"):text.index("## Targets")]
    check("--fill-keys 0: matrix peak RSS reported", "during the matrix" in memory)
    check("--fill-keys 0: no after-fill rows", "after the" not in memory)
    check("--fill-keys 0: no compaction note", "compacted" not in memory)
    check("--fill-keys 0: RSS target n/a", rss_target_line(text).endswith("| - | n/a |"))

    text, report = make_report(fill_keys=1000)
    check("fill: per-node RSS", "tessera per node after the fill (VmRSS MiB): node1 200" in text)
    check("fill: compaction note", "(revision 12345)" in text)
    # Issue 14: RSS must be <= 0.5x etcd's; equal is a miss.
    check("fill: RSS target evaluated", rss_target_line(text).endswith("| 1.00x | MISSED |"))
    put64 = next(t for t in report["targets"] if t["target"] == "put throughput, 64 clients")
    check("put-64 target: must 1.5x, goal 4x", put64["must"] == ">= 1.5x"
          and put64["goal"] == ">= 4x")
    check("put-64 target: 4000/1500 meets the must, not the goal", put64["result"] == "MET")
    check("the design difference is named", "KV.Batch stream" in text)
    check("issue 14 targets", "## Targets (issue 14" in text)

    # Both APIs: one row each per cell, etcd the same in both; targets judge batch.
    text, report = make_report(fill_keys=0, apis=("batch", "unary"))
    rows = [(c["cell"], c["api"], c["tessera"]["ops_per_sec"], c["etcd"]["ops_per_sec"])
            for c in report["cells"]]
    check("two apis: a row per cell and api",
          rows == [("put-64", "batch", 4000.0, 1500.0), ("put-64", "unary", 2000.0, 1500.0),
                   ("get-lin-256", "batch", 4000.0, 1500.0),
                   ("get-lin-256", "unary", 2000.0, 1500.0)])
    check("two apis: the api column", "| put-64 | 64 | unary | 2,000 |" in text)
    check("two apis: targets on batch", put64["ratio"] == 4000.0 / 1500.0
          and all(t["api"] == "batch" for t in report["targets"]))

    text, _ = make_report(fill_keys=1000, fill_done=False, failure="RuntimeError: fill failed")
    check("failed fill: no per-node RSS", "per node after the fill" not in text)

    for f in failures:
        print(f"compare_etcd_report_test: FAILED: {f}", file=sys.stderr)
    print(f"compare_etcd_report_test: {'FAILED' if failures else 'ok'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
