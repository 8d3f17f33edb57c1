#!/usr/bin/env python3
"""Renders a Grafana-style image of a dashboard from real Prometheus data.

Grafana itself is not a Debian package, so the README's dashboard image is made
here: the chosen panels of a dashboard JSON are queried from a running
Prometheus (the demo's, or the e2e test's), drawn as inline SVG in an HTML page
styled like Grafana's dark theme, and screenshotted with headless Chromium.

    render_dashboard_image.py --prometheus http://127.0.0.1:19090 \
        --dashboard dashboards/grafana/inferscope-moe.json \
        --var model=demo --var focus_layer=2 --minutes 5 \
        --out docs/images/dashboard-moe.png [--html out/dashboard-moe.html]

Panels default to the MoE dashboard's headline panels; --panel TITLE (repeatable)
picks others. Standard library only (plus the chromium binary for the PNG).
"""

import argparse
import html
import json
import math
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

sys.dont_write_bytecode = True
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import check_dashboards as cd  # noqa: E402

PALETTE = ["#73BF69", "#F2CC0C", "#8AB8FF", "#FF780A", "#F2495C", "#5794F2", "#B877D9",
           "#705DA0", "#37872D", "#FADE2A", "#447EBC", "#C15C17", "#890F02", "#0A437C"]
BG, PANEL_BG, BORDER, TEXT, DIM, GRID = "#111217", "#181b1f", "#2c3235", "#ccccdc", "#8e8e8e", "#2c3235"

RATE_INTERVAL = "1m"  # set from --rate-interval

DEFAULT_PANELS = [
    "Worst layer imbalance (max/mean), fleet",
    "Hot experts now",
    "Dead experts now",
    "Dropped assignments (fleet, 1m rate)",
    "Expert imbalance per layer (max/mean load)",
    "Routed, dropped and rerouted assignments",
    "Expert load share over time (layer $focus_layer)",
    "Experts in an open episode (hot / cold / dead)",
    "Expert-parallel rank utilization under the placement",
]


# [SECTION] Prometheus --------------------------------------------------------------

class Prom:
    def __init__(self, base):
        self.base = base.rstrip("/")

    def _get(self, path, params):
        url = f"{self.base}{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=20) as r:
            body = json.load(r)
        if body.get("status") != "success":
            raise RuntimeError(f"{url}: {body}")
        return body["data"]["result"]

    def range(self, expr, start, end, step):
        return self._get("/api/v1/query_range",
                         {"query": expr, "start": start, "end": end, "step": step})

    def instant(self, expr, t):
        return self._get("/api/v1/query", {"query": expr, "time": t})


def legend(fmt, metric):
    if not fmt or fmt == "__auto":
        return ",".join(f"{k}={v}" for k, v in sorted(metric.items()) if k != "__name__") or "value"
    out = fmt
    for k, v in metric.items():
        out = out.replace("{{" + k + "}}", v)
    return out


# [SECTION] SVG drawing -------------------------------------------------------------

def fmt_num(v, unit, decimals=None):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if decimals is not None and unit not in ("percentunit", "bytes"):
        return f"{v:.{decimals}f}"
    if unit in ("short", "none") and float(v).is_integer() and abs(v) < 1000:
        return f"{v:.0f}"
    if unit == "percentunit":
        return f"{v * 100:.1f}%"
    if unit == "bytes":
        for u in ("B", "KiB", "MiB", "GiB", "TiB"):
            if abs(v) < 1024:
                return f"{v:.1f} {u}"
            v /= 1024
    if abs(v) >= 1000:
        return f"{v / 1000:.1f}K"
    if abs(v) >= 10:
        return f"{v:.0f}"
    return f"{v:.2f}"


def threshold_color(panel, v):
    steps = panel.get("fieldConfig", {}).get("defaults", {}).get("thresholds", {}).get("steps", [])
    color = "#73BF69"
    for s in steps:
        if s.get("value") is None or (v is not None and v >= s["value"]):
            color = {"green": "#73BF69", "orange": "#FF9830", "red": "#F2495C"}.get(s["color"], s["color"])
    return color


def svg_timeseries(series, w, h, unit, threshold=None):
    """series: [(name, [(t, v)])]"""
    left, right, top, bottom = 46, 170, 8, 20
    pts = [(t, v) for _, s in series for t, v in s if v is not None]
    if not pts:
        return f'<text x="{w / 2}" y="{h / 2}" fill="{DIM}" text-anchor="middle">No data</text>'
    t0, t1 = min(p[0] for p in pts), max(p[0] for p in pts)
    vmax = max(max(p[1] for p in pts), threshold or 0) * 1.1 or 1
    vmin = min(0, min(p[1] for p in pts))
    pw, ph = w - left - right, h - top - bottom

    def X(t):
        return left + (t - t0) / max(t1 - t0, 1e-9) * pw

    def Y(v):
        return top + ph - (v - vmin) / (vmax - vmin) * ph
    out = []
    for i in range(5):
        v = vmin + (vmax - vmin) * i / 4
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{Y(v):.1f}" y2="{Y(v):.1f}" stroke="{GRID}"/>'
                   f'<text x="{left - 4}" y="{Y(v) + 4:.1f}" fill="{DIM}" font-size="10" '
                   f'text-anchor="end">{fmt_num(v, unit)}</text>')
    for i in range(5):
        t = t0 + (t1 - t0) * i / 4
        out.append(f'<text x="{X(t):.1f}" y="{h - 5}" fill="{DIM}" font-size="10" text-anchor="middle">'
                   f'{time.strftime("%H:%M:%S", time.localtime(t))}</text>')
    if threshold is not None:
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{Y(threshold):.1f}" y2="{Y(threshold):.1f}" '
                   f'stroke="#F2495C" stroke-dasharray="6 4"/>')
    for i, (name, s) in enumerate(series):
        c = PALETTE[i % len(PALETTE)]
        d = " ".join(f"{'M' if j == 0 else 'L'}{X(t):.1f},{Y(v):.1f}"
                     for j, (t, v) in enumerate((t, v) for t, v in s if v is not None))
        out.append(f'<path d="{d}" fill="none" stroke="{c}" stroke-width="1.5"/>')
    fit = max(1, int((h - top - bottom) / 15) - 1)  # legend rows that fit the panel
    for i, (name, s) in enumerate(series[:fit]):
        c = PALETTE[i % len(PALETTE)]
        last = next((v for _, v in reversed(s) if v is not None), None)
        y = top + 12 + i * 15
        out.append(f'<rect x="{left + pw + 10}" y="{y - 7}" width="10" height="3" fill="{c}"/>'
                   f'<text x="{left + pw + 24}" y="{y - 2}" fill="{TEXT}" font-size="11">'
                   f'{html.escape(name[:18])}</text>'
                   f'<text x="{w - 4}" y="{y - 2}" fill="{TEXT}" font-size="11" text-anchor="end">'
                   f'{fmt_num(last, unit)}</text>')
    if len(series) > fit:
        out.append(f'<text x="{left + pw + 10}" y="{top + 12 + fit * 15}" fill="{DIM}" font-size="11">'
                   f'+{len(series) - fit} more</text>')
    return "".join(out)


def svg_heatmap(series, w, h):
    left, top, bottom, right = 46, 6, 20, 60
    rows = sorted(series, key=lambda s: int(s[0]) if s[0].isdigit() else s[0])
    if not rows:
        return f'<text x="{w / 2}" y="{h / 2}" fill="{DIM}" text-anchor="middle">No data</text>'
    times = sorted({t for _, s in rows for t, _ in s})
    vmax = max((v for _, s in rows for _, v in s if v is not None), default=1) or 1
    pw, ph = w - left - right, h - top - bottom
    cw, rh = pw / max(len(times), 1), ph / len(rows)
    idx = {t: i for i, t in enumerate(times)}
    out = []
    for r, (name, s) in enumerate(rows):
        y = top + ph - (r + 1) * rh
        for t, v in s:
            if v is None:
                continue
            a = (v / vmax) ** 0.5
            col = f"rgb({int(40 + 215 * a)},{int(25 + 130 * a)},{int(20 + 10 * a)})"
            out.append(f'<rect x="{left + idx[t] * cw:.1f}" y="{y:.1f}" width="{cw + 0.3:.1f}" '
                       f'height="{rh - 1:.1f}" fill="{col}"/>')
        if len(rows) <= 24 or r % max(1, len(rows) // 16) == 0:
            out.append(f'<text x="{left - 4}" y="{y + rh / 2 + 4:.1f}" fill="{DIM}" font-size="10" '
                       f'text-anchor="end">{html.escape(name)}</text>')
    for i in range(5):
        t = times[0] + (times[-1] - times[0]) * i / 4
        x = left + (t - times[0]) / max(times[-1] - times[0], 1e-9) * pw
        out.append(f'<text x="{x:.1f}" y="{h - 5}" fill="{DIM}" font-size="10" text-anchor="middle">'
                   f'{time.strftime("%H:%M:%S", time.localtime(t))}</text>')
    for i in range(10):  # colour scale
        a = ((9 - i) / 9) ** 0.5
        col = f"rgb({int(40 + 215 * a)},{int(25 + 130 * a)},{int(20 + 10 * a)})"
        out.append(f'<rect x="{w - right + 14}" y="{top + i * ph / 10:.1f}" width="12" '
                   f'height="{ph / 10:.1f}" fill="{col}"/>')
    out.append(f'<text x="{w - right + 30}" y="{top + 10}" fill="{DIM}" font-size="10">'
               f'{vmax * 100:.0f}%</text><text x="{w - right + 30}" y="{top + ph}" fill="{DIM}" '
               f'font-size="10">0%</text>')
    return "".join(out)


# [SECTION] Panels ------------------------------------------------------------------

def render_panel(prom, panel, vals, start, end, step, w, h):
    unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "short")
    kind = panel["type"]
    decimals = panel.get("fieldConfig", {}).get("defaults", {}).get("decimals")
    builtins = {"__rate_interval": RATE_INTERVAL}
    body = ""
    if kind == "stat":
        t = panel["targets"][0]
        res = prom.instant(cd.substitute(t["expr"], vals, builtins), end)
        v = float(res[0]["value"][1]) if res else None
        if v is not None and math.isnan(v):
            v = None
        color = threshold_color(panel, v)
        body = (f'<rect x="0" y="0" width="{w}" height="{h - 28}" rx="2" fill="{color}" opacity="0.85"/>'
                f'<text x="{w / 2}" y="{(h - 28) / 2 + 14}" fill="#fff" font-size="34" font-weight="500" '
                f'text-anchor="middle">{fmt_num(v, unit, decimals)}</text>')
    elif kind == "table":
        t = panel["targets"][0]
        res = prom.instant(cd.substitute(t["expr"], vals, builtins), end)
        cols = ["rank", "layer", "expert", "kind"]
        head = "".join(f'<text x="{10 + i * 70}" y="14" fill="#6E9FFF" font-size="12">{c}</text>'
                       for i, c in enumerate(cols))
        head += f'<text x="{10 + 4 * 70}" y="14" fill="#6E9FFF" font-size="12">utilization (x mean)</text>'
        rows = sorted(res, key=lambda r: -float(r["value"][1]))[:8]
        for j, r in enumerate(rows):
            y = 36 + j * 20
            m = r["metric"]
            color = {"hot": "#F2495C", "cold": "#5794F2", "dead": "#8e8e8e"}.get(m.get("kind"), TEXT)
            head += f'<line x1="0" x2="{w}" y1="{y - 14}" y2="{y - 14}" stroke="{GRID}"/>'
            head += "".join(f'<text x="{10 + i * 70}" y="{y}" fill="{color if c == "kind" else TEXT}" '
                            f'font-size="12">{html.escape(m.get(c, ""))}</text>' for i, c in enumerate(cols))
            head += (f'<text x="{10 + 4 * 70}" y="{y}" fill="{TEXT}" font-size="12">'
                     f'{float(r["value"][1]):.2f}</text>')
        if not rows:
            head += f'<text x="10" y="40" fill="{DIM}" font-size="12">no open episodes</text>'
        body = head
    else:
        series = []
        for t in panel["targets"]:
            res = prom.range(cd.substitute(t["expr"], vals, builtins), start, end, step)
            for s in res:
                pts = [(float(ts), None if v in ("NaN", "+Inf", "-Inf") else float(v)) for ts, v in s["values"]]
                series.append((legend(t.get("legendFormat"), s["metric"]), pts))
        if kind == "heatmap":
            body = svg_heatmap(series, w, h - 28)
        else:
            steps = panel.get("fieldConfig", {}).get("defaults", {}).get("thresholds", {}).get("steps", [])
            thr = next((s["value"] for s in steps if s.get("value") is not None), None)
            draw = panel.get("fieldConfig", {}).get("defaults", {}).get("custom", {}) \
                .get("thresholdsStyle", {}).get("mode", "off") != "off"
            body = svg_timeseries(series, w, h - 28, unit, thr if draw else None)
    title = cd.substitute(panel["title"], vals)
    return (f'<div class="panel" style="width:{w}px;height:{h}px"><div class="title">'
            f'{html.escape(title)}</div><svg width="{w}" height="{h - 28}">{body}</svg></div>')


def build_html(prom, dash, titles, vals, minutes, width):
    end = time.time()
    start = end - minutes * 60
    step = max(2, int(minutes * 60 / 240))
    by_title = {p["title"]: p for p in cd.all_panels(dash)}
    missing = [t for t in titles if t not in by_title]
    if missing:
        raise SystemExit(f"panels not in {dash['uid']}: {missing}")
    # Grafana-like grid: stats in a row of four, then two columns of graphs, heatmap full width.
    parts, row = [], []
    col_w = (width - 3 * 8 - 16) // 2
    for t in titles:
        p = by_title[t]
        if p["type"] == "stat":
            row.append(render_panel(prom, p, vals, start, end, step, (width - 5 * 8 - 16) // 4, 110))
            continue
        if row:
            parts.append('<div class="row">' + "".join(row) + "</div>")
            row = []
        if p["type"] == "heatmap":
            parts.append('<div class="row">' + render_panel(prom, p, vals, start, end, step,
                                                             width - 2 * 8 - 16, 250) + "</div>")
        else:
            parts.append(render_panel(prom, p, vals, start, end, step, col_w, 230))
    if row:
        parts.append('<div class="row">' + "".join(row) + "</div>")
    var_bar = "".join(f'<span class="var"><b>{html.escape(k)}</b> {html.escape(v)}</span>'
                      for k, v in vals.items() if not k.startswith("__"))
    return f"""<!doctype html><html><head><meta charset="utf-8"><style>
body {{ background:{BG}; color:{TEXT}; font-family: Inter, 'DejaVu Sans', Helvetica, Arial, sans-serif;
       margin:0; padding:8px; width:{width - 16}px; }}
.top {{ display:flex; align-items:center; gap:12px; padding:4px 6px 10px; }}
.top h1 {{ font-size:18px; font-weight:500; margin:0; }}
.var {{ background:{PANEL_BG}; border:1px solid {BORDER}; padding:3px 8px; font-size:12px; border-radius:2px; }}
.var b {{ color:#6E9FFF; font-weight:500; margin-right:4px; }}
.grid {{ display:flex; flex-wrap:wrap; gap:8px; }}
.row {{ display:flex; gap:8px; width:100%; }}
.panel {{ background:{PANEL_BG}; border:1px solid {BORDER}; border-radius:2px; overflow:hidden; }}
.title {{ font-size:13px; font-weight:500; padding:6px 8px; height:16px; white-space:nowrap; }}
.foot {{ color:{DIM}; font-size:11px; padding:6px; }}
</style></head><body>
<div class="top"><h1>{html.escape(dash['title'])}</h1>{var_bar}<span class="var">last {minutes * 60:.0f}s</span></div>
<div class="grid">{''.join(parts)}</div>
<div class="foot">Rendered from live Prometheus data with dashboards/tools/render_dashboard_image.py
 (panel queries from {html.escape(dash['uid'])}.json) at {time.strftime('%Y-%m-%d %H:%M:%S')}</div>
</body></html>"""


def screenshot(html_path, png, width, height):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if not chromium:
        raise SystemExit("chromium not found (apt-get install chromium) -- the HTML is at " + str(html_path))
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu",
                        "--disable-background-networking", "--disable-component-update",
                        "--disable-sync", "--no-first-run", "--hide-scrollbars",
                        f"--user-data-dir={profile}", f"--screenshot={png}",
                        f"--window-size={width},{height}", f"file://{html_path}"],
                       check=True, capture_output=True, timeout=120)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prometheus", default="http://127.0.0.1:19090")
    ap.add_argument("--dashboard", default=str(cd.DEFAULT_DIR / "inferscope-moe.json"))
    ap.add_argument("--panel", action="append", help="panel title (repeatable)")
    ap.add_argument("--var", action="append", default=[], help="NAME=VALUE (others: .*)")
    ap.add_argument("--minutes", type=float, default=5)
    ap.add_argument("--rate-interval", default="1m",
                    help="what Grafana's $__rate_interval would be (>= 4 scrape intervals)")
    ap.add_argument("--width", type=int, default=1400)
    ap.add_argument("--height", type=int, default=900)
    ap.add_argument("--html")
    ap.add_argument("--out", help="the PNG (needs chromium); without it only --html is written")
    a = ap.parse_args()
    if not a.out and not a.html:
        ap.error("give --out PNG, --html PAGE or both")
    global RATE_INTERVAL
    RATE_INTERVAL = a.rate_interval
    dash = json.loads(pathlib.Path(a.dashboard).read_text())
    vals = {v["name"]: ".*" for v in dash["templating"]["list"] if v["type"] != "datasource"}
    vals.update(kv.split("=", 1) for kv in a.var)
    page = build_html(Prom(a.prometheus), dash, a.panel or DEFAULT_PANELS, vals, a.minutes, a.width)
    html_path = pathlib.Path(a.html or tempfile.mktemp(suffix=".html")).resolve()
    html_path.write_text(page)
    if not a.out:
        print(f"wrote {html_path}")
        return
    screenshot(html_path, pathlib.Path(a.out).resolve(), a.width, a.height)
    print(f"wrote {a.out} (html {html_path})")


if __name__ == "__main__":
    main()
