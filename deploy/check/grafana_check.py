"""Static check of deploy/grafana/*.json: each dashboard parses, has a uid and a title, unique
panel ids, a Prometheus datasource variable used by every query, and every metric name its queries
use (`lth_...`, histogram `_bucket`/`_sum`/`_count` series mapped to their histogram) is one that
the Rust sources register (a string literal in coordinator/src or worker/src), so the dashboard
cannot drift from the code. Then the same check runs on a broken copy (a query for a metric the
code does not have) and must fail.

    python3 deploy/check/grafana_check.py

Standard library only; run by deploy/check/run.sh.
"""

import copy
import glob
import json
import os
import re
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
SOURCES = ["coordinator/src", "worker/src"]
METRIC = re.compile(r"\blth_[a-z0-9_]*[a-z0-9]\b")
# Inside Rust string literals (escaped quotes allowed).
STRING = re.compile(r'"((?:[^"\\]|\\.)*)"')
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def registered_names(root=ROOT):
    names = set()
    for d in SOURCES:
        for path in glob.glob(os.path.join(root, d, "**", "*.rs"), recursive=True):
            with open(path, encoding="utf-8") as f:
                text = f.read()
            for lit in STRING.findall(text):
                names.update(METRIC.findall(lit))
    return names


def queries(dashboard):
    """Yields (panel title, expr) for every target of every panel, rows' panels included."""
    stack = list(dashboard.get("panels", []))
    while stack:
        p = stack.pop()
        stack.extend(p.get("panels", []))
        for t in p.get("targets", []):
            if "expr" in t:
                yield p.get("title", "?"), t["expr"], t.get("datasource"), p.get("id")


def check(dashboard, names, label):
    errors = []
    for key in ("uid", "title", "panels"):
        if not dashboard.get(key):
            errors.append(f"{label}: no {key}")
    variables = {v.get("name"): v for v in dashboard.get("templating", {}).get("list", [])}
    ds = variables.get("datasource")
    if not ds or ds.get("type") != "datasource" or ds.get("query") != "prometheus":
        errors.append(f"{label}: needs a Prometheus datasource variable named datasource")
    ids = []
    stack = list(dashboard.get("panels", []))
    while stack:
        p = stack.pop()
        stack.extend(p.get("panels", []))
        ids.append(p.get("id"))
    dupes = sorted({i for i in ids if ids.count(i) > 1}, key=str)
    if dupes or None in ids:
        errors.append(f"{label}: panel ids must be present and unique (duplicates: {dupes})")
    n = 0
    for title, expr, source, _ in queries(dashboard):
        n += 1
        if not source or source.get("uid") != "${datasource}":
            errors.append(f"{label}: panel {title!r}: its query must use the ${{datasource}} variable")
        for name in METRIC.findall(expr):
            base = name
            for s in HISTOGRAM_SUFFIXES:
                if name.endswith(s) and name[: -len(s)] in names:
                    base = name[: -len(s)]
            if base not in names:
                errors.append(f"{label}: panel {title!r} queries {name}, which no Rust source under {', '.join(SOURCES)} registers")
    if n == 0:
        errors.append(f"{label}: no queries")
    return errors


def main():
    names = registered_names()
    if len(names) < 10:
        print(f"grafana_check: found only {len(names)} metric names in the Rust sources; is the tree complete?", file=sys.stderr)
        return 1
    files = sorted(glob.glob(os.path.join(ROOT, "deploy", "grafana", "*.json")))
    if not files:
        print("grafana_check: no dashboards in deploy/grafana", file=sys.stderr)
        return 1
    errors = []
    for path in files:
        label = os.path.relpath(path, ROOT)
        try:
            with open(path, encoding="utf-8") as f:
                dashboard = json.load(f)
        except ValueError as e:
            errors.append(f"{label}: not JSON: {e}")
            continue
        errors += check(dashboard, names, label)
        # The check must catch drift: a copy querying a metric the code does not register fails.
        broken = copy.deepcopy(dashboard)
        broken["panels"].append({"id": 10_000, "title": "drift", "datasource": {"type": "prometheus", "uid": "${datasource}"},
                                 "targets": [{"expr": "rate(lth_no_such_metric_total[5m])", "refId": "A", "datasource": {"type": "prometheus", "uid": "${datasource}"}}]})
        if not any("lth_no_such_metric_total" in e for e in check(broken, names, label)):
            errors.append(f"{label}: the drift check did not catch a query for an unregistered metric")
    for e in errors:
        print(f"grafana_check: {e}", file=sys.stderr)
    if not errors:
        print(f"grafana_check: {len(files)} dashboard(s), every queried metric is registered ({len(names)} names in the sources)")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
