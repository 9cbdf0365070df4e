"""Prometheus rules: promtool accepts them and the example scrape config, the unit tests in rules_test.yml pass,
and those unit tests have teeth: for every alerting rule, a copy of the rules where it never fires, where it fires
without waiting its `for:`, or where its condition holds for every series, makes them fail on that alert."""

from __future__ import annotations

import re
import shutil

import pytest
import yaml

from tests.deploy.promql import (
    JOB,
    RULES,
    RULES_TEST,
    SCRAPE_CONFIG,
    exercised_metrics,
    metric_names,
    promtool,
    rules,
    series_names,
)

ALERTS = [r for r in rules() if "alert" in r]
SEVERITIES = {"critical", "warning", "info"}


def test_promtool_check_rules():
    out = promtool("check", "rules", str(RULES))
    assert out.returncode == 0 and "SUCCESS" in out.stdout, out.stdout + out.stderr


def test_promtool_check_example_config():
    out = promtool("check", "config", str(SCRAPE_CONFIG))  # also checks the rule files it loads
    assert out.returncode == 0, out.stdout + out.stderr
    config = yaml.safe_load(SCRAPE_CONFIG.read_text())
    assert [c["job_name"] for c in config["scrape_configs"]] == [JOB]  # the name the `up` alerts select
    assert config["rule_files"] == [RULES.name]


def test_promtool_unit_tests_pass():
    out = promtool("test", "rules", RULES_TEST.name, cwd=RULES_TEST.parent)
    assert out.returncode == 0 and "SUCCESS" in out.stdout, out.stdout + out.stderr


def test_rules_name_only_exported_series():
    allowed = series_names(exercised_metrics()) | {"up"} | {r["record"] for r in rules() if "record" in r}
    for rule in rules():
        names = metric_names(rule["expr"])
        assert names and names <= allowed, (rule.get("alert") or rule["record"], sorted(names - allowed))


def test_alerts_have_severity_for_and_a_description_with_the_value():
    names = {a["alert"] for a in ALERTS}
    assert names >= {"LfmAudioTargetDown", "LfmAudioEngineNotReady", "LfmAudioTimeToFirstAudioHigh",
                     "LfmAudioDecodeStepSlow", "LfmAudioEngineSaturated", "LfmAudioSlowerThanRealTime",
                     "LfmAudioUnderruns", "LfmAudioSessionsRejectedFull", "LfmAudioSessionsRejectedAuth",
                     "LfmAudioErrors", "LfmAudioEventLoopLag", "LfmAudioSlotsNearlyExhausted"}
    for a in ALERTS:
        assert a["labels"]["severity"] in SEVERITIES, a["alert"]
        assert re.fullmatch(r"[1-9]\d*[smh]", a["for"]), a["alert"]
        assert a["annotations"]["summary"] and "{{ $value" in a["annotations"]["description"], a["alert"]
    since = {a["labels"].get("since") for a in ALERTS if a["alert"] == "LfmAudioTimeToFirstAudioHigh"}
    assert since == {"commit", "speech_end"}


def _threshold_always_true(expr: str) -> str:
    m = re.fullmatch(r"(.+?)\s*(==|>=|>)\s*[0-9.]+", expr.strip())
    return f"{m.group(1)} >= -Inf" if m else f"({expr}) or vector(1)"


MUTATIONS = {
    # Never fires: the unit tests must expect it to fire somewhere.
    "never": lambda rule: {**rule, "expr": f"({rule['expr']}) unless on() vector(1)"},
    # Fires at once: the unit tests must check it is still quiet while its condition is pending.
    "no_for": lambda rule: {k: v for k, v in rule.items() if k != "for"},
    # Its condition holds for every series: the unit tests must have a neighbour that stays quiet.
    "always": lambda rule: {**rule, "expr": _threshold_always_true(rule["expr"])},
}


@pytest.mark.parametrize("mutation", MUTATIONS)
@pytest.mark.parametrize("index", range(len(ALERTS)), ids=[f"{a['alert']}-{i}" for i, a in enumerate(ALERTS)])
def test_unit_tests_catch_a_broken_alert(tmp_path, index, mutation):
    doc = yaml.safe_load(RULES.read_text())
    alerts = [(g, i) for g in doc["groups"] for i, r in enumerate(g["rules"]) if "alert" in r]
    group, i = alerts[index]
    name = group["rules"][i]["alert"]
    group["rules"][i] = MUTATIONS[mutation](group["rules"][i])
    (tmp_path / RULES.name).write_text(yaml.safe_dump(doc, sort_keys=False))
    shutil.copy(RULES_TEST, tmp_path / RULES_TEST.name)
    out = promtool("test", "rules", RULES_TEST.name, cwd=tmp_path)
    assert out.returncode != 0, f"{mutation} {name}: the unit tests still pass"
    failed = set(re.findall(r"alertname: (\w+), time:", out.stdout + out.stderr))
    assert failed == {name}, out.stdout + out.stderr
