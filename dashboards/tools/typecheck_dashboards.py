#!/usr/bin/env python3
"""Type-checks the Grafana dashboards against @grafana/schema, Grafana's own types.

    typecheck_dashboards.py [--dir dashboards/grafana] [--work DIR] [--self-test]

Installs @grafana/schema and TypeScript with npm into a scratch folder (nothing
is installed into the repository), writes each dashboard as a TypeScript object
literal typed as a Grafana Dashboard, and runs `tsc --noEmit --strict`. Object
literals get TypeScript's excess-property checks, so a field Grafana's model does
not have (a legacy annotation layout) fails, as does a missing required one (a
variable's `current` without text and value).

Datasource-specific fields are typed as the Prometheus datasource defines them
(@grafana/prometheus, not installed here: only the fields these dashboards use
are declared below): PromQuery extends DataQuery with expr, legendFormat, ...;
its annotation support reads titleFormat / textFormat / tagKeys / useValueForTime
from the annotation itself and expr / step from annotation.target (expr,
interval), which is the layout checked here.

Import-time fields (__inputs, __elements, __requires) are not part of the
dashboard model (Grafana strips them on import) and are left out of the check.

--self-test also checks that a dashboard with `current: {}` and a legacy
top-level annotation `expr` is rejected, so the check cannot pass vacuously.

Exit status: 0 all dashboards type-check; 1 a type error; 77 SKIPPED (npm or the
registry is unavailable; ctest reports the test as skipped, not passed).
"""

import argparse
import json
import pathlib
import shutil
import subprocess
import sys
import tempfile

SKIP = 77
SCHEMA = "@grafana/schema@13.2.3"
TYPESCRIPT = "typescript@5.9.3"

PRELUDE = """\
import type {
  AnnotationQuery, Dashboard, DataQuery, Panel, RowPanel, VariableModel,
} from '@grafana/schema';

// The Prometheus datasource's query (@grafana/prometheus PromQuery), the fields used here.
export interface PromQuery extends DataQuery {
  expr: string;
  legendFormat?: string;
  instant?: boolean;
  range?: boolean;
  exemplar?: boolean;
  format?: string;
  interval?: string;
  editorMode?: 'code' | 'builder';
}

// Options the Prometheus annotation support reads from the annotation itself.
export interface PromAnnotation extends AnnotationQuery<PromQuery> {
  titleFormat?: string;
  textFormat?: string;
  tagKeys?: string;
  useValueForTime?: boolean;
}

// Query variables also carry `definition` (the query as the variables list shows
// it), a field of Grafana's QueryVariableModel (@grafana/data) that exports write.
export interface QueryVariable extends VariableModel {
  definition?: string;
}

export type PromPanel = Omit<Panel, 'targets'> & { targets?: PromQuery[] };
export type PromRow = Omit<RowPanel, 'panels'> & { panels: PromPanel[] };

// JSON has no enums: a field typed with a string enum holds one of its values.
// `${E}` is the union of a string enum's values; everything else maps through.
type Json<T> = T extends string
  ? string extends T ? string : `${T}`
  : T extends Array<infer U>
    ? Array<Json<U>>
    : T extends object
      ? { [K in keyof T]: Json<T[K]> }
      : T;

export type InferscopeDashboard = Json<
  Omit<Dashboard, 'annotations' | 'panels' | 'templating'> & {
    annotations?: { list?: PromAnnotation[] };
    templating?: { list?: QueryVariable[] };
    panels?: Array<PromPanel | PromRow>;
  }
>;
"""


def skipped(why):
    print(f"SKIPPED: {why}")
    return SKIP


def install(work):
    npm = shutil.which("npm")
    if not npm:
        return None, "npm not found"
    (work / "package.json").write_text('{"private": true}\n')
    try:
        r = subprocess.run([npm, "install", "--no-audit", "--no-fund", "--loglevel=error",
                            SCHEMA, TYPESCRIPT], cwd=work, capture_output=True, text=True,
                           timeout=600)
    except subprocess.TimeoutExpired:
        return None, "npm install timed out (registry unreachable?)"
    if r.returncode != 0:
        return None, "npm install failed (registry unreachable?): " + r.stderr.strip()[-500:]
    tsc = work / "node_modules" / "typescript" / "bin" / "tsc"
    return (tsc if tsc.exists() else None), "typescript did not install"


def write_dashboard(work, name, dashboard):
    model = {k: v for k, v in dashboard.items() if not k.startswith("__")}
    text = ("import type { InferscopeDashboard } from './prelude';\n\n"
            f"export const dashboard: InferscopeDashboard = {json.dumps(model, indent=2)};\n")
    (work / f"{name}.ts").write_text(text)
    return f"{name}.ts"


def run_tsc(work, tsc, files):
    node = shutil.which("node")
    r = subprocess.run([node, str(tsc), "--noEmit", "--strict", "--target", "es2020",
                        "--moduleResolution", "node", "--module", "commonjs", "--skipLibCheck",
                        *files], cwd=work, capture_output=True, text=True, timeout=600)
    errors = {}
    for line in r.stdout.splitlines():
        name = line.split("(", 1)[0]
        if name.endswith(".ts"):
            errors.setdefault(name, []).append(line)
        elif errors and line.startswith(" "):
            errors[list(errors)[-1]].append(line)
    if r.returncode != 0 and not errors:
        errors["tsc"] = [r.stdout + r.stderr]
    return errors


def bad_variant(dashboard):
    d = json.loads(json.dumps(dashboard))
    d["templating"]["list"][-1]["current"] = {}
    anno = d["annotations"]["list"][-1]
    anno["expr"] = "up"
    return d


def main():
    here = pathlib.Path(__file__).resolve().parent
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default=str(here.parent / "grafana"))
    ap.add_argument("--work", help="scratch folder (default: a temporary one, removed after)")
    ap.add_argument("--self-test", action="store_true")
    args = ap.parse_args()

    dashboards = {p.stem: json.loads(p.read_text()) for p in sorted(pathlib.Path(args.dir).glob("*.json"))}
    if not dashboards:
        print(f"no dashboards in {args.dir}")
        return 1
    tmp = None
    if args.work:
        work = pathlib.Path(args.work)
        work.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="inferscope-grafana-schema-")
        work = pathlib.Path(tmp.name)
    try:
        tsc, why = install(work)
        if not tsc:
            return skipped(why)
        (work / "prelude.ts").write_text(PRELUDE)
        files = [write_dashboard(work, n, d) for n, d in dashboards.items()]
        bad = None
        if args.self_test:
            bad = write_dashboard(work, "zz-bad-variant", bad_variant(next(iter(dashboards.values()))))
            files.append(bad)
        errors = run_tsc(work, tsc, files)
        failed = False
        for name in files:
            if name == bad:
                text = "\n".join(errors.get(name, []))
                ok = "text, value" in text and '"expr"' in text
                print(f"{'ok  ' if ok else 'FAIL'} self-test: a dashboard with current: {{}} and a "
                      f"top-level annotation expr is {'rejected' if ok else 'NOT rejected'}")
                failed |= not ok
                continue
            if name in errors:
                failed = True
                print(f"FAIL {name[:-3]}.json:")
                for line in errors[name][:40]:
                    print("  " + line)
            else:
                print(f"ok   {name[:-3]}.json type-checks against {SCHEMA}")
        if "tsc" in errors:
            failed = True
            print("\n".join(errors["tsc"]))
        return 1 if failed else 0
    finally:
        if tmp:
            tmp.cleanup()


if __name__ == "__main__":
    sys.exit(main())
