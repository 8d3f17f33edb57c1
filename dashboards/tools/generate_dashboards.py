#!/usr/bin/env python3
"""Generates the Grafana dashboards in dashboards/grafana/ from one description.

Why a generator: four dashboards share the same datasource input, template
variables, panel shapes and label conventions. Writing them once here keeps the
JSON consistent (every panel has a datasource, an id, a gridPos and PromQL that
uses the same variables), and the committed JSON stays importable without this
script. `check_dashboards.py --check-generated` fails when the committed JSON and
this script disagree, so edit here and rerun:

    python3 dashboards/tools/generate_dashboards.py

Standard library only (runs on a bare Debian with python3).
"""

import json
import pathlib
import sys

DS = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
GRID_W = 24

# Selectors reused by every query; the variables are defined per dashboard.
MR = 'model=~"$model",rank=~"$rank"'
MRL = 'model=~"$model",rank=~"$rank",layer=~"$layer"'
RI = "$__rate_interval"


# [SECTION] Panel builders ------------------------------------------------------

class Layout:
    """Places panels left to right, wrapping at 24 columns (Grafana's grid)."""

    def __init__(self):
        self.x = 0
        self.y = 0
        self.row_h = 0
        self.next_id = 1

    def place(self, w, h):
        if self.x + w > GRID_W:
            self.x = 0
            self.y += self.row_h
            self.row_h = 0
        pos = {"h": h, "w": w, "x": self.x, "y": self.y}
        self.x += w
        self.row_h = max(self.row_h, h)
        return pos

    def new_row(self):
        if self.x:
            self.x = 0
            self.y += self.row_h
            self.row_h = 0

    def id(self):
        i = self.next_id
        self.next_id += 1
        return i


def target(expr, legend="", ref="A", instant=False, fmt="time_series"):
    t = {
        "datasource": DS,
        "editorMode": "code",
        "expr": expr,
        "legendFormat": legend or "__auto",
        "range": not instant,
        "instant": instant,
        "refId": ref,
    }
    if fmt != "time_series":
        t["format"] = fmt
    return t


def targets(*specs, instant=False, fmt="time_series"):
    """specs: (expr, legend) pairs; refIds A, B, C... in order."""
    return [target(e, l, chr(ord("A") + i), instant, fmt) for i, (e, l) in enumerate(specs)]


def thresholds(*steps):
    """steps: (value or None, color)."""
    return {"mode": "absolute", "steps": [{"color": c, "value": v} for v, c in steps]}


def timeseries(lay, title, desc, tgts, unit="short", w=12, h=8, stack=False, thr=None,
               min_=None, max_=None, draw_thresholds=False):
    custom = {
        "drawStyle": "line", "lineWidth": 1, "fillOpacity": 20 if stack else 5,
        "showPoints": "never", "spanNulls": True,
        "stacking": {"mode": "normal" if stack else "none", "group": "A"},
        "thresholdsStyle": {"mode": "line+area" if draw_thresholds else "off"},
    }
    defaults = {"unit": unit, "custom": custom, "color": {"mode": "palette-classic"}}
    if thr:
        defaults["thresholds"] = thr
    if min_ is not None:
        defaults["min"] = min_
    if max_ is not None:
        defaults["max"] = max_
    return {
        "id": lay.id(), "type": "timeseries", "title": title, "description": desc,
        "datasource": DS, "gridPos": lay.place(w, h), "targets": tgts,
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {"legend": {"displayMode": "table", "placement": "right", "showLegend": True,
                               "calcs": ["lastNotNull", "max"]},
                    "tooltip": {"mode": "multi", "sort": "desc"}},
    }


def stat(lay, title, desc, tgts, unit="short", w=6, h=4, thr=None, decimals=None):
    defaults = {"unit": unit, "color": {"mode": "thresholds"},
                "thresholds": thr or thresholds((None, "green"))}
    if decimals is not None:
        defaults["decimals"] = decimals
    return {
        "id": lay.id(), "type": "stat", "title": title, "description": desc,
        "datasource": DS, "gridPos": lay.place(w, h), "targets": tgts,
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                    "colorMode": "background", "graphMode": "area", "justifyMode": "auto",
                    "orientation": "auto", "textMode": "auto"},
    }


def gauge(lay, title, desc, tgts, unit="percentunit", w=8, h=6, thr=None):
    return {
        "id": lay.id(), "type": "gauge", "title": title, "description": desc,
        "datasource": DS, "gridPos": lay.place(w, h), "targets": tgts,
        "fieldConfig": {"defaults": {"unit": unit, "min": 0, "max": 1,
                                     "thresholds": thr or thresholds((None, "green"))},
                        "overrides": []},
        "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                    "showThresholdLabels": False, "showThresholdMarkers": True},
    }


def table(lay, title, desc, tgts, w=12, h=8, hide=("Time",), rename=None):
    return {
        "id": lay.id(), "type": "table", "title": title, "description": desc,
        "datasource": DS, "gridPos": lay.place(w, h), "targets": tgts,
        "fieldConfig": {"defaults": {"custom": {"align": "auto"}}, "overrides": []},
        "options": {"showHeader": True, "sortBy": [{"displayName": "Value", "desc": True}]},
        "transformations": [{"id": "organize", "options": {
            "excludeByName": {k: True for k in hide}, "renameByName": rename or {}}}],
    }


def heatmap(lay, title, desc, tgts, w=24, h=10, unit="percentunit"):
    # Each series is one expert (a row); calculate=false keeps the collector's
    # load share as the cell value instead of re-bucketing it.
    return {
        "id": lay.id(), "type": "heatmap", "title": title, "description": desc,
        "datasource": DS, "gridPos": lay.place(w, h), "targets": tgts,
        "fieldConfig": {"defaults": {"custom": {"hideFrom": {"legend": False, "tooltip": False,
                                                             "viz": False},
                                                "scaleDistribution": {"type": "linear"}}},
                        "overrides": []},
        "options": {
            "calculate": False, "cellGap": 1,
            "color": {"mode": "scheme", "scheme": "Oranges", "scale": "exponential",
                      "exponent": 0.5, "steps": 64, "fill": "dark-orange", "reverse": False},
            "exemplars": {"color": "rgba(255,0,255,0.7)"},
            "filterValues": {"le": 1e-9},
            "legend": {"show": True},
            "rowsFrame": {"layout": "auto"},
            "tooltip": {"show": True, "yHistogram": False},
            "yAxis": {"axisPlacement": "left", "reverse": False},
            "cellValues": {"unit": unit},
        },
    }


def bargauge(lay, title, desc, tgts, w=12, h=8, unit="short"):
    return {
        "id": lay.id(), "type": "bargauge", "title": title, "description": desc,
        "datasource": DS, "gridPos": lay.place(w, h), "targets": tgts,
        "fieldConfig": {"defaults": {"unit": unit, "min": 0,
                                     "color": {"mode": "continuous-GrYlRd"},
                                     "thresholds": thresholds((None, "green"))},
                        "overrides": []},
        "options": {"displayMode": "gradient", "orientation": "vertical",
                    "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                    "showUnfilled": True},
    }


def row(lay, title):
    lay.new_row()
    pos = lay.place(GRID_W, 1)
    lay.new_row()
    return {"id": lay.id(), "type": "row", "title": title, "collapsed": False,
            "gridPos": pos, "panels": []}


# [SECTION] Template variables ----------------------------------------------------

def initial_current(multi=False, include_all=False):
    # Grafana's VariableOption needs text and value (an empty `current: {}` does not
    # type-check against @grafana/schema). "All" where there is one; otherwise
    # nothing selected yet, which makes Grafana take the first option on load.
    if include_all:
        return {"selected": True, "text": ["All"] if multi else "All",
                "value": ["$__all"] if multi else "$__all"}
    return {"selected": False, "text": "", "value": ""}


def query_var(name, label, query, multi=True, include_all=True, sort=1, hide=0):
    v = {
        "name": name, "label": label, "type": "query", "datasource": DS,
        "definition": query, "query": {"query": query, "refId": "PrometheusVariableQueryEditor"},
        "refresh": 2, "regex": "", "sort": sort, "multi": multi, "includeAll": include_all,
        "hide": hide, "current": initial_current(multi, include_all), "options": [],
    }
    if include_all:
        v["allValue"] = ".*"
    return v


def datasource_var():
    # A datasource variable with the input's name makes ${DS_PROMETHEUS} resolve
    # both when the JSON is imported through the UI (Grafana substitutes the
    # __inputs entry) and when it is file-provisioned (Grafana resolves the
    # variable; provisioning does not substitute __inputs).
    return {"name": "DS_PROMETHEUS", "label": "Prometheus", "type": "datasource",
            "query": "prometheus", "refresh": 1, "regex": "", "hide": 0,
            "current": initial_current(), "options": []}


def model_rank_layer_vars(metric, with_layer=True, focus_layer=False):
    vs = [
        datasource_var(),
        query_var("model", "model", f"label_values({metric}, model)"),
        query_var("rank", "rank", f'label_values({metric}{{model=~"$model"}}, rank)', sort=3),
    ]
    if with_layer:
        vs.append(query_var("layer", "layer",
                            f'label_values({metric}{{model=~"$model",rank=~"$rank"}}, layer)',
                            sort=3))
    if focus_layer:
        # One layer for the expert x time heatmap: a heatmap of several layers'
        # experts averaged together would hide the hot one.
        vs.append(query_var("focus_layer", "heatmap layer",
                            f'label_values({metric}{{model=~"$model",rank=~"$rank"}}, layer)',
                            multi=False, include_all=False, sort=3))
    return vs


# [SECTION] Dashboard shell -------------------------------------------------------

def dashboard(uid, title, description, panels, variables, panel_types, links_to):
    return {
        "__inputs": [{"name": "DS_PROMETHEUS", "label": "Prometheus",
                      "description": "Prometheus that scrapes the inferscope collectors",
                      "type": "datasource", "pluginId": "prometheus", "pluginName": "Prometheus"}],
        "__elements": {},
        "__requires": [{"type": "grafana", "id": "grafana", "name": "Grafana", "version": "10.0.0"},
                       {"type": "datasource", "id": "prometheus", "name": "Prometheus",
                        "version": "1.0.0"}]
        + [{"type": "panel", "id": t, "name": t, "version": ""} for t in sorted(panel_types)],
        "annotations": {"list": [
            {"builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"},
             "enable": True, "hide": True, "iconColor": "rgba(0, 211, 255, 1)",
             "name": "Annotations & Alerts", "type": "dashboard"},
            # Grafana's Prometheus annotation layout: the query (expr, and the step as
            # interval) in target; title/text formats stay on the annotation, where the
            # Prometheus datasource reads them (typecheck_dashboards.py).
            {"datasource": DS, "enable": True, "iconColor": "red", "name": "inferscope alerts",
             "target": {"refId": "Anno", "datasource": DS,
                        "expr": 'ALERTS{alertname=~"Inferscope.*",alertstate="firing"}',
                        "interval": "30s"},
             "titleFormat": "{{alertname}}",
             "textFormat": "{{model}} rank {{rank}} layer {{layer}} expert {{expert}}",
             "useValueForTime": False},
            # The GPU capture an episode asked for (docs/gpu.md): the series' value is the
            # request's Unix time (x1000: Grafana reads milliseconds), and the text says how to
            # open that capture's kernels in Perfetto.
            {"datasource": DS, "enable": True, "iconColor": "purple", "name": "GPU captures",
             "target": {"refId": "Captures", "datasource": DS,
                        "expr": 'inferscope_collector_episode_capture_timestamp_seconds * 1000',
                        "interval": "30s"},
             "titleFormat": "GPU capture: {{kind}} (model {{model}})",
             "textFormat": "rank {{rank}} layer {{layer}} expert {{expert}}; open the kernels: "
                           "inferscope-export STORE --episode {{episode}} -o capture.pftrace",
             "useValueForTime": True},
        ]},
        "description": description,
        "editable": True, "fiscalYearStartMonth": 0, "graphTooltip": 1, "id": None,
        "links": [{"title": t, "type": "link", "url": f"/d/{u}", "targetBlank": False,
                   "keepTime": True, "includeVars": True, "icon": "dashboard", "tags": [],
                   "asDropdown": False, "tooltip": ""} for u, t in links_to],
        "liveNow": False,
        "panels": panels,
        "refresh": "10s", "schemaVersion": 38,
        "tags": ["inferscope"],
        "templating": {"list": variables},
        "time": {"from": "now-30m", "to": "now"},
        "timepicker": {"refresh_intervals": ["5s", "10s", "30s", "1m", "5m"]},
        "timezone": "", "title": title, "uid": uid, "version": 1, "weekStart": "",
    }


LINKS = [("inferscope-moe", "MoE routing"), ("inferscope-memory", "Memory & cache"),
         ("inferscope-latency", "Latency & stages"), ("inferscope-health", "Health")]


def links_except(uid):
    return [l for l in LINKS if l[0] != uid]


# [SECTION] 1. MoE routing ----------------------------------------------------------

def moe_dashboard():
    L = Layout()
    p = []
    p.append(row(L, "Fleet (recording rules over every rank and node)"))
    p.append(stat(L, "Worst layer imbalance (max/mean), fleet",
                  "Largest per-layer max/mean expert load over every rank and node "
                  "(recording rule inferscope:moe_layer_imbalance_ratio:max_over_ranks). "
                  "1 is perfectly balanced; the hot-expert threshold is 2 by default.",
                  targets(('max(inferscope:moe_layer_imbalance_ratio:max_over_ranks{model=~"$model"})',
                           "worst layer")),
                  unit="none", decimals=2,
                  thr=thresholds((None, "green"), (1.5, "orange"), (2, "red"))))
    p.append(stat(L, "Hot experts now",
                  "Experts in an open hot episode (collector: share above --hot-threshold times "
                  "the mean for --hot-windows windows), summed over the selected ranks and layers.",
                  targets((f'sum(inferscope_moe_layer_experts{{{MRL},state="hot"}})', "hot")),
                  thr=thresholds((None, "green"), (1, "red"))))
    p.append(stat(L, "Dead experts now",
                  "Experts that received no tokens for the detection windows (wasted memory, or "
                  "a router collapse).",
                  targets((f'sum(inferscope_moe_layer_experts{{{MRL},state="dead"}})', "dead")),
                  thr=thresholds((None, "green"), (1, "orange"))))
    p.append(stat(L, "Dropped assignments (fleet, 1m rate)",
                  "Share of routed assignments dropped because their expert was over capacity "
                  "(recording rule inferscope:moe_drop_ratio:fleet_rate1m; worst layer).",
                  targets(('max(inferscope:moe_drop_ratio:fleet_rate1m{model=~"$model"})',
                           "worst layer")),
                  unit="percentunit", decimals=2,
                  thr=thresholds((None, "green"), (0.001, "orange"), (0.01, "red"))))
    p.append(timeseries(L, "Fleet expert imbalance per layer (max/mean over all ranks)",
                        "max/mean of each expert's routed tokens summed over every rank and node "
                        "(recording rule inferscope:moe_expert_imbalance_ratio:fleet). Needs the "
                        "collectors' --per-expert-metrics; otherwise use the per-rank panel below.",
                        targets(('inferscope:moe_expert_imbalance_ratio:fleet{model=~"$model"}',
                                 "layer {{layer}}")),
                        unit="none", thr=thresholds((None, "green"), (2, "red")),
                        draw_thresholds=True))
    p.append(timeseries(L, "Fleet rank-load imbalance per layer (max/mean over ranks)",
                        "Routed assignments per rank: the busiest rank over the mean rank "
                        "(recording rule inferscope:moe_rank_load_imbalance_ratio:fleet), and the "
                        "worst per-rank layer imbalance (inferscope:moe_layer_imbalance_ratio:"
                        "max_over_ranks).",
                        targets(('inferscope:moe_rank_load_imbalance_ratio:fleet{model=~"$model"}',
                                 "ranks, layer {{layer}}"),
                                ('inferscope:moe_layer_imbalance_ratio:max_over_ranks{model=~"$model"}',
                                 "worst rank, layer {{layer}}")),
                        unit="none"))

    p.append(row(L, "Per layer"))
    p.append(timeseries(L, "Expert imbalance per layer (max/mean load)",
                        "Per layer and rank, the busiest expert's load over the mean expert load "
                        "in the collector's last window. Above 2 a single expert's device sets the "
                        "step time for the whole layer.",
                        targets((f"inferscope_moe_layer_imbalance_ratio{{{MRL}}}",
                                 "rank {{rank}} layer {{layer}}")),
                        unit="none", thr=thresholds((None, "green"), (2, "red")),
                        draw_thresholds=True))
    p.append(timeseries(L, "Load coefficient of variation per layer",
                        "Standard deviation over mean of the expert loads in the last window; "
                        "0 is perfectly balanced. Rises before a single expert crosses the hot "
                        "threshold.",
                        targets((f"inferscope_moe_layer_load_cv{{{MRL}}}",
                                 "rank {{rank}} layer {{layer}}")),
                        unit="none"))
    p.append(heatmap(L, "Expert load share over time (layer $focus_layer)",
                     "Each row is an expert; the colour is its share of the layer's routed "
                     "assignments per collector window (1/experts when balanced). Pick the layer "
                     "in the 'heatmap layer' variable. Needs the collector's --per-expert-metrics.",
                     targets((f'avg by (expert) (inferscope_moe_expert_load_share{{{MR},layer="$focus_layer"}})',
                              "{{expert}}"))))
    p.append(table(L, "Experts in an open episode (hot / cold / dead)",
                   "One row per expert that the collector currently reports in an episode, with its "
                   "utilization (load over the mean load) in the last window. The hot-expert alert "
                   "fires from the same series.",
                   targets((f"inferscope_moe_expert_utilization_current_ratio{{{MRL}}} "
                            f"* on (model, rank, layer, expert) group_left (kind) "
                            f"(inferscope_moe_expert_episode{{{MRL}}} == 1)", ""),
                           instant=True, fmt="table"),
                   hide=("Time", "__name__", "job", "instance"),
                   rename={"Value": "utilization (x mean)"}))
    p.append(timeseries(L, "Routed, dropped and rerouted assignments",
                        "Assignments per second: routed by the router's top-k, dropped because "
                        "the expert was over capacity = ceil(capacity_factor * tokens * k / "
                        "experts), rerouted to another expert. Dropped > 0 is silent quality loss.",
                        targets((f"sum by (layer) (rate(inferscope_moe_routed_tokens_total{{{MRL}}}[{RI}]))",
                                 "routed layer {{layer}}"),
                                (f"sum by (layer) (rate(inferscope_moe_dropped_tokens_total{{{MRL}}}[{RI}]))",
                                 "dropped layer {{layer}}"),
                                (f"sum by (layer) (rate(inferscope_moe_rerouted_tokens_total{{{MRL}}}[{RI}]))",
                                 "rerouted layer {{layer}}")),
                        unit="short"))
    p.append(timeseries(L, "Per-rank routed load",
                        "Routed assignments per second per rank (each rank is one engine "
                        "process). Uneven ranks mean data-parallel traffic skew, not expert skew.",
                        targets((f"sum by (rank) (rate(inferscope_moe_routed_tokens_total{{{MRL}}}[{RI}]))",
                                 "rank {{rank}}")),
                        unit="short"))
    p.append(timeseries(L, "Expert-parallel rank utilization under the placement",
                        "Load of each physical EP rank (the experts the placement puts on it) over "
                        "the mean rank load, and the balancedness mean/max (1 is ideal). A hot "
                        "expert shows here as one rank above 1.",
                        targets((f'inferscope_moe_ep_rank_utilization_ratio{{model=~"$model",layer=~"$layer"}}',
                                 "EP rank {{rank}} layer {{layer}}"),
                                (f'inferscope_moe_ep_balancedness_ratio{{model=~"$model",layer=~"$layer"}}',
                                 "balancedness layer {{layer}}")),
                        unit="none"))
    p.append(timeseries(L, "Busiest and idlest expert utilization",
                        "Highest and lowest expert load over the mean load per layer in the last "
                        "window (1 = mean).",
                        targets((f"max by (layer) (inferscope_moe_layer_max_utilization_ratio{{{MRL}}})",
                                 "max layer {{layer}}"),
                                (f"min by (layer) (inferscope_moe_layer_min_utilization_ratio{{{MRL}}})",
                                 "min layer {{layer}}")),
                        unit="none"))
    p.append(timeseries(L, "Experts by state",
                        "How many experts the collector classifies hot, cold or dead per window.",
                        targets((f"sum by (state) (inferscope_moe_layer_experts{{{MRL}}})",
                                 "{{state}}")),
                        unit="short", stack=True))
    p.append(bargauge(L, "Distribution of expert utilization (window observations)",
                      "Histogram of per-expert utilization (load over mean), one observation per "
                      "expert per window over the dashboard range. Mass far right of 1 = hot "
                      "experts; at 0 = dead experts.",
                      targets((f"sum by (le) (increase(inferscope_moe_expert_utilization_ratio_bucket{{{MRL}}}[$__range]))",
                               "{{le}}"), instant=True, fmt="heatmap")))
    p.append(timeseries(L, "Expert episodes started",
                        "Episodes (hot, cold, dead) the collector opened over the range, per layer.",
                        targets((f"sum by (layer, kind) (increase(inferscope_moe_expert_episodes_total{{{MRL}}}[$__range]))",
                                 "{{kind}} layer {{layer}}")),
                        unit="short"))
    # Expert parallelism: the physical EP ranks (placement or EP records), so
    # only model and layer filter here (an EP rank need not be an agent rank).
    EPM = 'model=~"$model"'
    EPL = 'model=~"$model",layer=~"$layer"'
    p.append(row(L, "Expert parallelism (EP ranks)"))
    p.append(timeseries(L, "EP rank load: now vs after an EPLB re-placement",
                        "Each physical EP rank's load over the mean rank's, worst MoE layer: under the "
                        "current expert placement, and under the EPLB-style re-placement the collector "
                        "plans from the same window's expert loads with --eplb-redundant extra slots "
                        "(docs/metrics.md). 1 is the fair share; a hot rank sits above the 1.25 line.",
                        targets((f"max by (rank) (inferscope_moe_ep_rank_utilization_ratio{{{EPL}}})",
                                 "now, EP rank {{rank}}"),
                                (f"max by (rank) (inferscope_moe_ep_eplb_rank_utilization_ratio{{{EPL}}})",
                                 "after EPLB, EP rank {{rank}}")),
                        unit="none", thr=thresholds((None, "green"), (1.25, "red")), draw_thresholds=True))
    p.append(timeseries(L, "EP balancedness: now vs after EPLB (worst layer)",
                        "Mean over max EP rank load (1 = balanced), the worst MoE layer, now and under "
                        "the EPLB what-if. The gap is what a re-placement with redundant experts would buy.",
                        targets((f"min(inferscope_moe_ep_balancedness_ratio{{{EPL}}})", "now"),
                                (f"min(inferscope_moe_ep_eplb_balancedness_ratio{{{EPL}}})", "after EPLB")),
                        unit="none"))
    p.append(timeseries(L, "EP time per rank: all-to-all vs expert compute vs idle",
                        "Share of wall time each EP rank spends per second in the MoE layers' dispatch "
                        "all-to-all, its experts' compute, the combine all-to-all, and idle: the slowest "
                        "rank's compute minus its own per (step, layer), which it spends waiting inside "
                        "combine (so idle is part of combine). From the ranks' expert_parallel records.",
                        targets((f"sum by (rank) (rate(inferscope_ep_dispatch_seconds_total{{{EPL}}}[{RI}]))",
                                 "dispatch rank {{rank}}"),
                                (f"sum by (rank) (rate(inferscope_ep_expert_compute_seconds_total{{{EPL}}}[{RI}]))",
                                 "compute rank {{rank}}"),
                                (f"sum by (rank) (rate(inferscope_ep_combine_seconds_total{{{EPL}}}[{RI}]))",
                                 "combine rank {{rank}}"),
                                (f"sum by (rank) (rate(inferscope_ep_idle_seconds_total{{{EPL}}}[{RI}]))",
                                 "idle rank {{rank}}")),
                        unit="percentunit"))
    p.append(timeseries(L, "EP straggler rate per rank",
                        "Share of (step, MoE layer) pairs, joined over every rank, in which the rank's "
                        "expert compute was the slowest: the rank the others wait for.",
                        targets((f"sum by (model, rank) (rate(inferscope_ep_straggler_steps_total{{{EPM}}}[{RI}])) "
                                 f"/ on (model) group_left sum by (model) (rate(inferscope_ep_joined_steps_total{{{EPM}}}[{RI}]))",
                                 "rank {{rank}}"),),
                        unit="percentunit"))
    p.append(timeseries(L, "Hot EP ranks",
                        "Each EP rank's rows computed (else its placement load) over the mean rank's in "
                        "the last window, and 1 while it is in a hot-rank episode (>= --hot-rank-threshold "
                        "for --hot-windows windows). The viewer's EP ranks view and the collector log name "
                        "the layers and experts responsible.",
                        targets((f"inferscope_ep_rank_utilization_ratio{{{EPM}}}", "load, rank {{rank}}"),
                                (f"inferscope_ep_rank_hot{{{EPM}}}", "hot, rank {{rank}}")),
                        unit="none", thr=thresholds((None, "green"), (1.25, "red")), draw_thresholds=True))
    # Traffic matrix (issue 24): only the collector's bounded top-K pairs per layer
    # and per-rank totals; the full rank x rank matrix is in the viewer.
    p.append(timeseries(L, "EP dispatch traffic: heaviest rank pairs",
                        "Dispatch rows per second from src to dst rank, last window, for each MoE layer's "
                        "K heaviest pairs only (--ep-top-pairs, default 8; combine returns the same rows, "
                        "dst to src). Bounded: at most K series per layer whatever the rank count. The "
                        "viewer's EP view draws the whole rank x rank matrix.",
                        targets((f"topk(8, max by (src, dst) (inferscope_ep_traffic_top_pair_rows_per_second{{{EPL}}}))",
                                 "{{src}} -> {{dst}}"),),
                        unit="none"))
    p.append(timeseries(L, "EP dispatch traffic per rank: bytes out and in",
                        "Bytes per second each EP rank sends to (out) and receives from (in) the other ranks "
                        "in dispatch, all selected MoE layers; combine moves the same bytes the other way.",
                        targets((f"sum by (rank) (rate(inferscope_ep_traffic_bytes_out_total{{{EPL}}}[{RI}]))",
                                 "out, rank {{rank}}"),
                                (f"sum by (rank) (rate(inferscope_ep_traffic_bytes_in_total{{{EPL}}}[{RI}]))",
                                 "in, rank {{rank}}")),
                        unit="Bps"))
    # The advisor's cost series (move bytes, stall, break-even) exist only with
    # --eplb-expert-bytes and break-even is +Inf when nothing is saved, so the panel
    # plots the saving, which every EP run with a placement has.
    p.append(timeseries(L, "EPLB advisor: MoE time a re-placement would save per step",
                        "Straggler expert compute minus the predicted compute after the EPLB what-if's "
                        "re-placement, per step (all MoE layers) and for the MoE layer that gains most "
                        "(docs/expert-parallel.md, \"How the advisor computes\"). What it costs and when "
                        "it pays back: inferscope_ep_eplb_move_bytes, _move_stall_seconds and "
                        "_break_even_seconds, with the collector's --eplb-expert-bytes.",
                        targets((f"inferscope_ep_eplb_saving_seconds_per_step{{{EPM}}}", "per step, {{model}}"),
                                (f"max by (model) (inferscope_ep_eplb_layer_saving_seconds_per_step{{{EPL}}})",
                                 "best layer, {{model}}")),
                        unit="s"))
    types = {x["type"] for x in p}
    return dashboard("inferscope-moe", "inferscope / MoE routing",
                     "Expert load per layer and rank, imbalance, hot experts, token drops and "
                     "expert-parallel placement. Every query is testable with promtool query "
                     "(see docs/dashboards.md).",
                     p, model_rank_layer_vars("inferscope_moe_routed_tokens_total", focus_layer=True), types,
                     links_except("inferscope-moe"))


# [SECTION] 2. Memory and cache -------------------------------------------------------

def memory_dashboard():
    L = Layout()
    p = []
    p.append(row(L, "Memory"))
    p.append(timeseries(L, "Memory used by kind",
                        "Bytes in use per kind: attention KV cache, SSM state (fixed per sequence), "
                        "SSM prefix checkpoints, weights, activations. KV grows with total tokens in "
                        "flight; SSM state grows with sequences, not tokens.",
                        targets((f"sum by (kind) (inferscope_memory_used_bytes{{{MR}}})", "{{kind}}")),
                        unit="bytes", stack=True))
    p.append(timeseries(L, "KV cache versus SSM state: used and capacity",
                        "Used bytes (solid) against the capacity the engine reserved, for the "
                        "attention KV cache and the SSM state and checkpoints.",
                        targets((f'sum by (kind) (inferscope_memory_used_bytes{{{MR},kind=~"kv_cache|ssm_state|ssm_checkpoints"}})',
                                 "used {{kind}}"),
                                (f'sum by (kind) (inferscope_memory_capacity_bytes{{{MR},kind=~"kv_cache|ssm_state|ssm_checkpoints"}})',
                                 "capacity {{kind}}")),
                        unit="bytes"))
    p.append(gauge(L, "Utilization by kind (used / capacity)",
                   "Recording rule inferscope:memory_utilization_ratio. The KV-cache-near-full "
                   "alert fires above 95% for 5 minutes.",
                   targets((f"inferscope:memory_utilization_ratio{{{MR}}}", "rank {{rank}} {{kind}}")),
                   thr=thresholds((None, "green"), (0.8, "orange"), (0.95, "red"))))
    p.append(timeseries(L, "KV cache headroom",
                        "Capacity minus used KV cache bytes per rank: how many more tokens can be "
                        "admitted before the scheduler must preempt or evict.",
                        targets((f'sum by (rank) (inferscope_memory_capacity_bytes{{{MR},kind="kv_cache"}}) '
                                 f'- sum by (rank) (inferscope_memory_used_bytes{{{MR},kind="kv_cache"}})',
                                 "rank {{rank}}")),
                        unit="bytes", w=8, h=6))
    p.append(timeseries(L, "Memory utilization per rank",
                        "used / capacity per rank and kind over time.",
                        targets((f"inferscope:memory_utilization_ratio{{{MR}}}", "rank {{rank}} {{kind}}")),
                        unit="percentunit", w=8, h=6, max_=1, min_=0))

    p.append(row(L, "Prefix cache"))
    p.append(timeseries(L, "Prefix-cache hit rate by layer kind",
                        "Hit tokens over queried tokens. For hybrid models the SSM line can only "
                        "hit where the engine checkpointed the state at that prefix boundary, so it "
                        "sits below the attention line; a drop of both is a workload or eviction "
                        "change.",
                        targets((f"sum by (layer_kind) (rate(inferscope_prefix_cache_hit_tokens_total{{{MR}}}[{RI}])) "
                                 f"/ sum by (layer_kind) (rate(inferscope_prefix_cache_queried_tokens_total{{{MR}}}[{RI}]))",
                                 "{{layer_kind}}")),
                        unit="percentunit", min_=0, max_=1))
    p.append(timeseries(L, "Prefix-cache queried and hit tokens",
                        "Tokens per second looked up in the prefix cache and found.",
                        targets((f"sum by (layer_kind) (rate(inferscope_prefix_cache_queried_tokens_total{{{MR}}}[{RI}]))",
                                 "queried {{layer_kind}}"),
                                (f"sum by (layer_kind) (rate(inferscope_prefix_cache_hit_tokens_total{{{MR}}}[{RI}]))",
                                 "hit {{layer_kind}}")),
                        unit="short"))
    p.append(timeseries(L, "SSM checkpoint evictions",
                        "Checkpoints per second a full SSM checkpoint pool evicted, split by whether "
                        "a request had restored them. Mostly never-restored evictions: the pool is "
                        "too small for the prefix reuse distance (alert "
                        "InferscopeSsmCheckpointsEvictedUnused).",
                        targets((f"sum by (reused) (rate(inferscope_ssm_checkpoint_evictions_total{{{MR}}}[{RI}]))",
                                 "reused={{reused}}")),
                        unit="short", stack=True))
    p.append(stat(L, "Fleet prefix hit rate (5m)",
                  "Recording rule inferscope:prefix_cache_hit_ratio:fleet_rate5m, over every rank "
                  "and node.",
                  targets(('inferscope:prefix_cache_hit_ratio:fleet_rate5m{model=~"$model"}',
                           "{{layer_kind}}")),
                  unit="percentunit", w=12, decimals=1,
                  thr=thresholds((None, "red"), (0.2, "orange"), (0.5, "green"))))
    p.append(stat(L, "Cached share of prompt tokens",
                  "Prompt tokens served from the prefix cache over all prompt tokens, from the "
                  "per-request token counters.",
                  targets((f'sum(rate(inferscope_request_tokens_total{{{MR},kind="cached"}}[{RI}])) '
                           f'/ sum(rate(inferscope_request_tokens_total{{{MR},kind="prompt"}}[{RI}]))',
                           "cached share")),
                  unit="percentunit", w=12, decimals=1))
    types = {x["type"] for x in p}
    return dashboard("inferscope-memory", "inferscope / Memory & cache",
                     "Attention KV cache versus SSM state bytes per rank, capacity, and prefix-cache "
                     "hit rates by layer kind.",
                     p, model_rank_layer_vars("inferscope_memory_used_bytes", with_layer=False),
                     types, links_except("inferscope-memory"))


# [SECTION] 3. Latency and stages -------------------------------------------------------

def quantiles(metric, sel):
    return targets(*[(f"histogram_quantile({q}, sum by (le) (rate({metric}_bucket{{{sel}}}[{RI}])))",
                      f"p{int(q * 100)}") for q in (0.5, 0.95, 0.99)])


def latency_dashboard():
    L = Layout()
    p = []
    p.append(row(L, "Requests (SLO)"))
    p.append(timeseries(L, "Time to first token", "p50 / p95 / p99 from the "
                        "inferscope_request_ttft_seconds histogram.",
                        quantiles("inferscope_request_ttft_seconds", MR), unit="s", w=8))
    p.append(timeseries(L, "Time per output token", "p50 / p95 / p99 decode time per output "
                        "token from inferscope_request_time_per_output_token_seconds.",
                        quantiles("inferscope_request_time_per_output_token_seconds", MR),
                        unit="s", w=8))
    p.append(timeseries(L, "End-to-end request latency", "p50 / p95 / p99 from "
                        "inferscope_request_e2e_seconds.",
                        quantiles("inferscope_request_e2e_seconds", MR), unit="s", w=8))
    p.append(timeseries(L, "Requests by status", "Finished requests per second by status "
                        "(ok, cancelled, error, rejected).",
                        targets((f"sum by (status) (rate(inferscope_requests_total{{{MR}}}[{RI}]))",
                                 "{{status}}")), unit="reqps", stack=True))
    p.append(timeseries(L, "Tokens per second by kind", "Prompt, output, image and cached "
                        "(prefix-hit) tokens per second.",
                        targets((f"sum by (kind) (rate(inferscope_request_tokens_total{{{MR}}}[{RI}]))",
                                 "{{kind}}")), unit="short"))

    p.append(row(L, "Stages: encoder, connector, backbone"))
    p.append(timeseries(L, "Stage time p95", "p95 of each stage's wall time per request: "
                        "vision encoder, connector (projector), backbone prefill and decode. The "
                        "slow layer of a multimodal model is the one that grows.",
                        targets((f"histogram_quantile(0.95, sum by (le, stage) (rate(inferscope_stage_duration_seconds_bucket{{{MR}}}[{RI}])))",
                                 "{{stage}}")), unit="s"))
    p.append(timeseries(L, "Mean stage time", "Mean wall time per stage execution "
                        "(histogram sum over count).",
                        targets((f"sum by (stage) (rate(inferscope_stage_duration_seconds_sum{{{MR}}}[{RI}])) "
                                 f"/ sum by (stage) (rate(inferscope_stage_duration_seconds_count{{{MR}}}[{RI}]))",
                                 "{{stage}}")), unit="s"))
    p.append(timeseries(L, "Time spent per stage (share of wall time)",
                        "Seconds spent per second in each stage, stacked: where the serving time "
                        "goes.",
                        targets((f"sum by (stage) (rate(inferscope_stage_duration_seconds_sum{{{MR}}}[{RI}]))",
                                 "{{stage}}")), unit="s", stack=True))
    p.append(timeseries(L, "GPU time per stage", "GPU kernel seconds per second attributed to "
                        "each stage (CUPTI kernels inside the stage's NVTX range). Only stages whose GPU "
                        "time is measured have a series: empty on the CPU backend.",
                        targets((f"sum by (stage) (rate(inferscope_stage_gpu_seconds_total{{{MR}}}[{RI}]))",
                                 "{{stage}}")), unit="s", stack=True))
    p.append(stat(L, "TTFT p95 (5m, recording rule)", "inferscope:request_ttft_seconds:p95_rate5m.",
                  targets(('inferscope:request_ttft_seconds:p95_rate5m{model=~"$model"}', "{{model}}")),
                  unit="s", w=8, decimals=3))
    p.append(stat(L, "Time per output token p95 (5m)",
                  "inferscope:request_time_per_output_token_seconds:p95_rate5m.",
                  targets(('inferscope:request_time_per_output_token_seconds:p95_rate5m{model=~"$model"}',
                           "{{model}}")), unit="s", w=8, decimals=4))
    p.append(stat(L, "Error ratio (5m)", "inferscope:request_error_ratio:rate5m: errored and "
                  "rejected requests over all finished requests.",
                  targets(('inferscope:request_error_ratio:rate5m{model=~"$model"}', "{{model}}")),
                  unit="percentunit", w=8, decimals=2,
                  thr=thresholds((None, "green"), (0.01, "orange"), (0.05, "red"))))
    types = {x["type"] for x in p}
    return dashboard("inferscope-latency", "inferscope / Latency & stages",
                     "TTFT, time per output token and end-to-end percentiles; encoder, connector "
                     "and backbone time per request; GPU time per stage.",
                     p, model_rank_layer_vars("inferscope_requests_total", with_layer=False),
                     types, links_except("inferscope-latency"))


# [SECTION] 4. Health -----------------------------------------------------------------

def health_dashboard():
    L = Layout()
    p = []
    J = 'job=~"$job"'
    p.append(row(L, "Collector"))
    p.append(stat(L, "Collectors up", "Scrape status of every collector target (1 up, 0 down). "
                  "The InferscopeCollectorDown alert fires after one minute down.",
                  targets((f"up{{{J}}}", "{{instance}}")),
                  thr=thresholds((None, "red"), (1, "green"))))
    p.append(stat(L, "Agent connections", "Open agent connections per collector.",
                  targets((f"sum by (instance) (inferscope_collector_connections{{{J}}})",
                           "{{instance}}"))))
    p.append(stat(L, "Trace bytes on disk", "Bytes of trace segments the collector keeps "
                  "(bounded by --trace-max-bytes).",
                  targets((f"sum by (instance) (inferscope_collector_trace_bytes{{{J}}})",
                           "{{instance}}")), unit="bytes"))
    p.append(stat(L, "Alerts firing", "inferscope alerts firing now in Prometheus.",
                  targets(('count(ALERTS{alertname=~"Inferscope.*",alertstate="firing"}) or vector(0)',
                           "firing")),
                  thr=thresholds((None, "green"), (1, "red"))))
    p.append(timeseries(L, "Ingest: frames and records per second",
                        "What the collector decodes from agents.",
                        targets((f"sum by (instance) (rate(inferscope_collector_frames_total{{{J}}}[{RI}]))",
                                 "frames {{instance}}"),
                                (f"sum by (kind) (rate(inferscope_collector_records_total{{{J}}}[{RI}]))",
                                 "records {{kind}}")), unit="short"))
    p.append(timeseries(L, "Ingest bytes per second", "Bytes received from agents (compressed "
                        "frames as sent).",
                        targets((f"sum by (instance) (rate(inferscope_collector_bytes_received_total{{{J}}}[{RI}]))",
                                 "{{instance}}")), unit="Bps"))
    p.append(timeseries(L, "Rejected frames by reason",
                        "Frames the collector refused (bad magic, CRC, size, version, auth). "
                        "Non-zero means a misconfigured or incompatible agent, or corruption.",
                        targets((f"sum by (reason) (rate(inferscope_collector_rejected_frames_total{{{J}}}[{RI}]))",
                                 "{{reason}}")), unit="short"))
    p.append(timeseries(L, "Connections and trace writes",
                        "New agent connections per second and trace write errors per second.",
                        targets((f"sum by (instance) (rate(inferscope_collector_connections_total{{{J}}}[{RI}]))",
                                 "new connections {{instance}}"),
                                (f"sum by (instance) (rate(inferscope_collector_trace_write_errors_total{{{J}}}[{RI}]))",
                                 "trace write errors {{instance}}")), unit="short"))

    p.append(timeseries(L, "Frames not sent to slow viewers",
                        "Frames the collector dropped for a viewer whose queue was full (the "
                        "viewer falls behind; metrics and trace files are unaffected).",
                        targets((f"sum by (instance, reason) (rate(inferscope_collector_viewer_dropped_frames_total{{{J}}}[{RI}]))",
                                 "{{instance}} {{reason}}")), unit="short", w=24, h=6))

    p.append(row(L, "Agents"))
    p.append(timeseries(L, "Agent records sent and dropped",
                        "Records shipped per second per agent, records the agent had to drop "
                        "because its buffer was full or the collector was unreachable, and records "
                        "written to a collector that died before acknowledging them (may be lost).",
                        targets((f"sum by (model, rank) (rate(inferscope_agent_records_sent_total{{{MR}}}[{RI}]))",
                                 "sent {{model}} rank {{rank}}"),
                                # An agent that never dropped has no dropped series (the
                                # collector creates them on the first drop): show it as 0.
                                (f"sum by (model, rank) (rate(inferscope_agent_records_dropped_total{{{MR}}}[{RI}])) "
                                 f"or sum by (model, rank) (rate(inferscope_agent_records_sent_total{{{MR}}}[{RI}])) * 0",
                                 "dropped {{model}} rank {{rank}}"),
                                # Records written on a connection that then died without
                                # the collector's acknowledgement (kill -9): maybe lost.
                                (f"sum by (model, rank) (rate(inferscope_agent_records_unconfirmed_total{{{MR}}}[{RI}])) "
                                 f"or sum by (model, rank) (rate(inferscope_agent_records_sent_total{{{MR}}}[{RI}])) * 0",
                                 "unconfirmed {{model}} rank {{rank}}")), unit="short"))
    p.append(timeseries(L, "Agent drops by record kind",
                        "Which kinds of records the agents dropped. Spans go first under "
                        "pressure; expert loads and requests are kept longest.",
                        # kind="none" at 0 while no agent has dropped anything: the
                        # collector creates a kind's series on its first drop.
                        targets((f"sum by (kind) (rate(inferscope_agent_records_dropped_total{{{MR}}}[{RI}])) "
                                 f'or label_replace(sum(rate(inferscope_agent_records_sent_total{{{MR}}}[{RI}])) * 0, '
                                 f'"kind", "none", "", "")',
                                 "{{kind}}")), unit="short"))
    p.append(timeseries(L, "Agents connected", "1 while the agent holds a connection to its "
                        "collector.",
                        targets((f"inferscope_agent_connected{{{MR}}}", "{{model}} rank {{rank}}")),
                        unit="short", min_=0, max_=1, w=8))
    p.append(timeseries(L, "Agent reconnects", "Reconnects per second.",
                        targets((f"sum by (model, rank) (rate(inferscope_agent_reconnects_total{{{MR}}}[{RI}]))",
                                 "{{model}} rank {{rank}}")), unit="short", w=8))
    p.append(timeseries(L, "Scrape duration and samples", "Prometheus' own view of each "
                        "collector scrape.",
                        targets((f"scrape_duration_seconds{{{J}}}", "duration {{instance}}"),
                                (f"scrape_samples_scraped{{{J}}}", "samples {{instance}}")),
                        unit="short", w=8))
    vs = [datasource_var(),
          query_var("job", "job", "label_values(inferscope_collector_frames_total, job)"),
          query_var("model", "model", "label_values(inferscope_agent_records_sent_total, model)"),
          query_var("rank", "rank",
                    'label_values(inferscope_agent_records_sent_total{model=~"$model"}, rank)', sort=3)]
    types = {x["type"] for x in p}
    return dashboard("inferscope-health", "inferscope / Health",
                     "Collector ingest, rejected frames, agent drops and reconnects, scrape status.",
                     p, vs, types, links_except("inferscope-health"))


DASHBOARDS = {
    "inferscope-moe.json": moe_dashboard,
    "inferscope-memory.json": memory_dashboard,
    "inferscope-latency.json": latency_dashboard,
    "inferscope-health.json": health_dashboard,
}


def render_all():
    return {name: json.dumps(fn(), indent=2, sort_keys=False) + "\n" for name, fn in DASHBOARDS.items()}


def main():
    out = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else \
        pathlib.Path(__file__).resolve().parent.parent / "grafana"
    out.mkdir(parents=True, exist_ok=True)
    for name, text in render_all().items():
        (out / name).write_text(text)
        print(f"wrote {out / name}")


if __name__ == "__main__":
    main()
