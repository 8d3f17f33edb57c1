#!/usr/bin/env python3
"""Proves check_dashboards.py catches what it claims to: each case breaks one
thing in a copy of a real dashboard and expects the checker to name it.

    test_check_dashboards.py [--promtool PATH]
"""

import copy
import json
import pathlib
import subprocess
import sys
import tempfile

sys.dont_write_bytecode = True  # keep the source tree clean
import unittest

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import check_dashboards as cd  # noqa: E402

PROMTOOL = None


class CheckerCatchesBreakage(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dashboards = cd.load_dashboards(cd.DEFAULT_DIR)
        cls.recorded = cd.recorded_names(cd.DEFAULT_RULES)
        cls.moe = cls.dashboards["inferscope-moe.json"]

    def errors_for(self, dash):
        errors = []
        cd.check_dashboard("x.json", dash, self.recorded, errors)
        return errors

    def first_query_panel(self, d):
        return next(p for p in cd.all_panels(d) if p.get("targets"))

    def test_committed_dashboards_pass(self):
        for name, d in self.dashboards.items():
            self.assertEqual(self.errors_for(d), [], name)

    def test_every_dashboard_has_queries_and_variables(self):
        for name, d in self.dashboards.items():
            self.assertGreaterEqual(len(list(cd.panel_queries(d))), 5, name)
            self.assertIn("model", cd.variables(d), name)

    def test_unknown_metric(self):
        d = copy.deepcopy(self.moe)
        self.first_query_panel(d)["targets"][0]["expr"] = "inferscope_moe_routed_tokns_total"
        self.assertTrue(any("not in the metric catalog" in e for e in self.errors_for(d)))

    def test_undefined_recording_rule(self):
        d = copy.deepcopy(self.moe)
        self.first_query_panel(d)["targets"][0]["expr"] = "inferscope:no_such_rule"
        self.assertTrue(any("is not defined in the rule files" in e for e in self.errors_for(d)))

    def test_undefined_variable(self):
        d = copy.deepcopy(self.moe)
        self.first_query_panel(d)["targets"][0]["expr"] = 'up{instance=~"$nodes"}'
        self.assertTrue(any("undefined variable $nodes" in e for e in self.errors_for(d)))

    def test_request_id_label_is_refused(self):
        d = copy.deepcopy(self.moe)
        self.first_query_panel(d)["targets"][0]["expr"] = \
            "sum by (request_id) (inferscope_requests_total)"
        self.assertTrue(any("'request_id' is not a catalog label" in e for e in self.errors_for(d)))

    def test_overlapping_panels(self):
        d = copy.deepcopy(self.moe)
        panels = [p for p in d["panels"] if p["type"] != "row"]
        panels[1]["gridPos"] = dict(panels[0]["gridPos"])
        self.assertTrue(any("overlaps" in e for e in self.errors_for(d)))

    def test_duplicate_panel_id(self):
        d = copy.deepcopy(self.moe)
        d["panels"][2]["id"] = d["panels"][1]["id"]
        self.assertTrue(any("not unique" in e for e in self.errors_for(d)))

    def test_missing_datasource_input_and_old_schema(self):
        d = copy.deepcopy(self.moe)
        d["__inputs"] = []
        d["schemaVersion"] = 27
        errs = self.errors_for(d)
        self.assertTrue(any("DS_PROMETHEUS" in e for e in errs))
        self.assertTrue(any("schemaVersion" in e for e in errs))

    def test_missing_layer_variable(self):
        d = copy.deepcopy(self.moe)
        d["templating"]["list"] = [v for v in d["templating"]["list"] if v["name"] != "layer"]
        self.assertTrue(any("'layer' missing" in e for e in self.errors_for(d)))

    def test_invalid_json_file(self):
        with tempfile.TemporaryDirectory() as tmp:
            (pathlib.Path(tmp) / "broken.json").write_text('{"uid": "x", ')
            with self.assertRaisesRegex(ValueError, "broken.json: not valid JSON"):
                cd.load_dashboards(tmp)

    def test_substitute_fills_variables(self):
        expr = 'rate(x{model=~"$model",rank=~"${rank}",layer="[[layer]]"}[$__rate_interval])'
        self.assertEqual(cd.substitute(expr, {"model": "demo", "rank": "0|1", "layer": "3"}),
                         'rate(x{model=~"demo",rank=~"0|1",layer="3"}[1m])')
        with self.assertRaises(KeyError):
            cd.substitute("x{a=\"$missing\"}", {})

    @unittest.skipUnless(PROMTOOL or "--promtool" in sys.argv, "needs --promtool")
    def test_promtool_rejects_bad_promql(self):
        d = copy.deepcopy(self.moe)
        self.first_query_panel(d)["targets"][0]["expr"] = "sum by (layer (inferscope_moe_layer_load_cv)"
        errors = []
        cd.promtool_parse({"x.json": d}, PROMTOOL, errors)
        self.assertTrue(any("PromQL does not parse" in e for e in errors), errors)

    def test_cli_lists_queries_as_json(self):
        out = subprocess.run([sys.executable, str(HERE / "check_dashboards.py"), "--list-queries"],
                             capture_output=True, text=True, check=True).stdout
        queries = json.loads(out)
        self.assertEqual({q["uid"] for q in queries},
                         {"inferscope-moe", "inferscope-memory", "inferscope-latency",
                          "inferscope-health"})
        self.assertTrue(all(q["expr"] for q in queries))


if __name__ == "__main__":
    if "--promtool" in sys.argv:
        i = sys.argv.index("--promtool")
        PROMTOOL = sys.argv[i + 1]
        del sys.argv[i:i + 2]
    unittest.main(verbosity=1)
