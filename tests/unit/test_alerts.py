"""The shipped Prometheus alert rules: valid, about metrics joblot exposes, and (where promtool
is installed) firing on the series they are about."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from joblot.metrics import HttpMetrics, exposition
from joblot.store import MetricCounts

ROOT = Path(__file__).parents[2]
RULES = ROOT / "docs" / "prometheus-alerts.yml"
CASES = Path(__file__).parent / "data" / "alerts_test.yml"


def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def exposed_names() -> set[str]:
    body = exposition(MetricCounts([], [], 0, []), HttpMetrics()).decode()
    families = set(re.findall(r"^# TYPE (\S+) (\S+)$", body, re.MULTILINE))
    names = {name for name, _ in families}
    for name, kind in families:
        if kind == "histogram":
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return names


def test_every_alert_has_a_summary_and_uses_only_metrics_joblot_exposes() -> None:
    exposed = exposed_names()
    alerts = rules()
    assert {"JoblotJobsStuck", "JoblotLeasesExpiring", "JoblotWebhookDeliveriesFailing"} <= {
        r["alert"] for r in alerts
    }
    for rule in alerts:
        assert rule["annotations"]["summary"]
        used = set(re.findall(r"\bjoblot_[a-z_]+", rule["expr"]))
        assert used and used <= exposed, (rule["alert"], used - exposed)


def test_promtool_finds_the_rules_valid_and_each_alert_fires_on_its_series() -> None:
    if shutil.which("promtool") is None:
        reason = "promtool is not installed (apt-get install prometheus)"
        if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
            pytest.fail(f"CI is set, so the alert rules must be checked: {reason}", pytrace=False)
        pytest.skip(reason)
    checked = subprocess.run(
        ["promtool", "check", "rules", str(RULES)], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = subprocess.run(
        ["promtool", "test", "rules", CASES.name],
        cwd=CASES.parent,
        capture_output=True,
        text=True,
        check=False,
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr
