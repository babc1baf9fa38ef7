"""Generate the Grafana dashboard and the PrometheusRule of a Stable-Layers run.

    python dashboards/generate.py           # rewrite dashboards/stable-layers.json and
                                            # observability/prometheusrule.yaml
    python dashboards/generate.py --check   # exit 1 if the checked-in files differ (CI)

The dashboard is built with grafana-foundation-sdk's typed builders and centred on GRPO's reward
spread: a group with zero reward std gives zero advantages and so no gradient, which makes the
within-group std (per stage), the zero-variance ratio and the std distribution the first row.
The alert rules' single source is observability/alerts.rules.yaml (plain Prometheus rules, what
promtool checks); the PrometheusRule manifest wraps the same groups for the Prometheus Operator.
Metric names: docs/metrics.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml
from grafana_foundation_sdk.builders.common import VizLegendOptions
from grafana_foundation_sdk.builders.dashboard import (
    Dashboard,
    DatasourceVariable,
    QueryVariable,
    Row,
    ThresholdsConfig,
)
from grafana_foundation_sdk.builders.prometheus import Dataquery
from grafana_foundation_sdk.builders.stat import Panel as Stat
from grafana_foundation_sdk.builders.timeseries import Panel as Timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import LegendDisplayMode, LegendPlacement
from grafana_foundation_sdk.models.dashboard import (
    DashboardCursorSync,
    DataSourceRef,
    Threshold,
    ThresholdsMode,
    VariableRefresh,
    VariableSort,
)

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD_JSON = ROOT / "dashboards" / "stable-layers.json"
RULES = ROOT / "observability" / "alerts.rules.yaml"
PROMETHEUS_RULE = ROOT / "observability" / "prometheusrule.yaml"
UID = "stable-layers-run"

DS = DataSourceRef(type_val="prometheus", uid="${datasource}")
SEL = 'namespace=~"$namespace", run=~"$run"'
"""Label selector every panel query carries (the dashboard's variables)."""


def q(expr: str, legend: str = "{{run}}") -> Dataquery:
    return Dataquery().expr(expr).legend_format(legend).datasource(DS)


def ts(title: str, description: str, *targets: Dataquery, unit: str = "short", width: int = 8) -> Timeseries:
    panel = (
        Timeseries()
        .title(title)
        .description(description)
        .datasource(DS)
        .unit(unit)
        .span(width)
        .height(8)
        .legend(
            VizLegendOptions().display_mode(LegendDisplayMode.LIST).placement(LegendPlacement.BOTTOM).show_legend(True)
        )
    )
    for target in targets:
        panel = panel.with_target(target)
    return panel


def stat(title: str, description: str, target: Dataquery, unit: str = "short", width: int = 6) -> Stat:
    return (
        Stat().title(title).description(description).datasource(DS).unit(unit).span(width).height(4).with_target(target)
    )


def thresholds(*steps: tuple[float | None, str]) -> ThresholdsConfig:
    return ThresholdsConfig().mode(ThresholdsMode.ABSOLUTE).steps([Threshold(value=v, color=c) for v, c in steps])


def quantile(p: float, metric: str, by: str = "run") -> str:
    return f"histogram_quantile({p}, sum by ({by}, le) (rate({metric}_bucket{{{SEL}}}[$__rate_interval])))"


def build_dashboard() -> Dashboard:
    judge_failed = 'outcome=~"parse_error|error"'
    return (
        Dashboard("Stable-Layers run")
        .uid(UID)
        .description("Flow-GRPO fine-tuning of Qwen-Image-Layered: reward spread, rubric, optimisation, judge")
        .tags(["stable-layers", "grpo"])
        .refresh("30s")
        .time("now-6h", "now")
        .timezone("browser")
        .tooltip(DashboardCursorSync.CROSSHAIR)
        .with_variable(DatasourceVariable("datasource").label("Data source").type("prometheus"))
        .with_variable(
            QueryVariable("namespace")
            .label("Namespace")
            .datasource(DS)
            .query("label_values(stable_layers_step, namespace)")
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(VariableSort.ALPHABETICAL_ASC)
            .multi(True)
            .include_all(True)
            .all_value(".*")
        )
        .with_variable(
            QueryVariable("run")
            .label("Run")
            .datasource(DS)
            .query('label_values(stable_layers_step{namespace=~"$namespace"}, run)')
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(VariableSort.ALPHABETICAL_ASC)
            .multi(True)
            .include_all(True)
            .all_value(".*")
        )
        .with_row(Row("Reward spread (GRPO signal)"))
        .with_panel(
            ts(
                "Within-group reward std by stage",
                "Mean over the step's groups of the std of each stage's score within a group "
                "(stage 1: per-sample rubric, stage 2: grid calibration). Near 0 = no advantage signal.",
                q(f"stable_layers_stage_group_std{{{SEL}}}", "{{run}} stage {{stage}}"),
            )
        )
        .with_panel(
            ts(
                "Zero-variance group ratio",
                "Share of the step's groups whose rewards are all equal: they contribute no gradient.",
                q(f"stable_layers_zero_std_group_ratio{{{SEL}}}"),
                unit="percentunit",
            )
            .min(0)
            .max(1)
            .thresholds(thresholds((None, "green"), (0.25, "yellow"), (0.5, "red")))
        )
        .with_panel(
            ts(
                "Within-group reward std (p10 / p50 / p90)",
                "Quantiles of stable_layers_group_reward_std, one observation per scored group.",
                q(quantile(0.1, "stable_layers_group_reward_std"), "{{run}} p10"),
                q(quantile(0.5, "stable_layers_group_reward_std"), "{{run}} p50"),
                q(quantile(0.9, "stable_layers_group_reward_std"), "{{run}} p90"),
            )
        )
        .with_panel(
            ts(
                "Reward mean and std",
                "Mean and std of the step's rewards over all candidates.",
                q(f"stable_layers_reward_mean{{{SEL}}}", "{{run}} mean"),
                q(f"stable_layers_reward_std{{{SEL}}}", "{{run}} std"),
                width=12,
            )
        )
        .with_panel(
            ts(
                "Rubric criterion scores",
                "Mean score in [0, 1] of each of the five rubric criteria.",
                q(f"stable_layers_criterion_score{{{SEL}}}", "{{run}} {{criterion}}"),
                width=12,
            )
            .min(0)
            .max(1)
        )
        .with_row(Row("Optimisation"))
        .with_panel(ts("Policy loss", "Clipped surrogate loss of the step.", q(f"stable_layers_loss{{{SEL}}}")))
        .with_panel(
            ts(
                "KL",
                "KL to the adapter-disabled reference (0 with klBeta = 0) and approx. KL rollout → update.",
                q(f"stable_layers_kl{{{SEL}}}", "{{run}} kl"),
                q(f"stable_layers_approx_kl{{{SEL}}}", "{{run}} approx_kl"),
            )
        )
        .with_panel(
            ts(
                "Clip fraction",
                "Share of ratios outside the PPO clip range.",
                q(f"stable_layers_clipfrac{{{SEL}}}"),
                unit="percentunit",
            )
        )
        .with_row(Row("Progress and throughput"))
        .with_panel(stat("Optimizer step", "Steps completed.", q(f"max by (run) (stable_layers_step{{{SEL}}})")))
        .with_panel(
            stat(
                "Time since last step",
                "Seconds since the last optimizer step (or since the trainer started).",
                q(f"time() - max by (run) (stable_layers_last_step_timestamp_seconds{{{SEL}}})"),
                unit="s",
            ).thresholds(thresholds((None, "green"), (900, "yellow"), (1800, "red")))
        )
        .with_panel(
            ts(
                "Samples per second",
                "Training throughput of the last step.",
                q(f"stable_layers_samples_per_second{{{SEL}}}"),
                width=6,
            )
        )
        .with_panel(
            ts(
                "Step seconds",
                "Wall seconds of the last step.",
                q(f"stable_layers_step_seconds{{{SEL}}}"),
                unit="s",
                width=6,
            )
        )
        .with_row(Row("Reward judge"))
        .with_panel(
            ts(
                "Judge requests by outcome",
                "Requests per second to the reward judge: ok, parse_error (unparsable answer), error "
                "(failed after the backend's retries).",
                q(
                    f"sum by (run, outcome) (rate(stable_layers_judge_requests_total{{{SEL}}}[$__rate_interval]))",
                    "{{run}} {{outcome}}",
                ),
                unit="reqps",
                width=6,
            )
        )
        .with_panel(
            ts(
                "Judge failure ratio",
                "parse_error + error over all judge requests (the StableLayersJudgeFailureRateHigh alert).",
                q(
                    f"sum by (run) (rate(stable_layers_judge_requests_total{{{SEL}, {judge_failed}}}[$__rate_interval]))"
                    f" / clamp_min(sum by (run) (rate(stable_layers_judge_requests_total{{{SEL}}}[$__rate_interval])), 1e-9)"
                ),
                unit="percentunit",
                width=6,
            ).thresholds(thresholds((None, "green"), (0.05, "yellow"), (0.2, "red")))
        )
        .with_panel(
            ts(
                "Retries and reward fallbacks",
                "Transport retries and re-asks per second; stage1 = candidates scored by the fallback "
                "policy, stage2 = groups whose grid calibration failed.",
                q(
                    f"sum by (run, kind) (rate(stable_layers_judge_retries_total{{{SEL}}}[$__rate_interval]))",
                    "{{run}} {{kind}}",
                ),
                q(
                    f"sum by (run, stage) (rate(stable_layers_reward_fallbacks_total{{{SEL}}}[$__rate_interval]))",
                    "{{run}} fallback {{stage}}",
                ),
                unit="ops",
                width=6,
            )
        )
        .with_panel(
            ts(
                "Judge latency",
                "p50 / p95 seconds of one judge request, and p50 seconds to score a whole group.",
                q(quantile(0.5, "stable_layers_judge_latency_seconds"), "{{run}} request p50"),
                q(quantile(0.95, "stable_layers_judge_latency_seconds"), "{{run}} request p95"),
                q(quantile(0.5, "stable_layers_group_score_seconds"), "{{run}} group p50"),
                unit="s",
                width=6,
            )
        )
        .with_row(Row("Checkpoints"))
        .with_panel(
            stat(
                "Last committed checkpoint",
                "Step of the newest committed checkpoint.",
                q(f"max by (run) (stable_layers_last_checkpoint_step{{{SEL}}})"),
                width=8,
            )
        )
        .with_panel(
            stat(
                "Checkpoints committed",
                "Checkpoints committed by this trainer process.",
                q(f"sum by (run) (stable_layers_checkpoint_upload_seconds_count{{{SEL}}})"),
                width=8,
            )
        )
        .with_panel(
            stat(
                "Mean checkpoint upload time",
                "Mean seconds to upload and commit one checkpoint.",
                q(
                    f"sum by (run) (stable_layers_checkpoint_upload_seconds_sum{{{SEL}}})"
                    f" / sum by (run) (stable_layers_checkpoint_upload_seconds_count{{{SEL}}})"
                ),
                unit="s",
                width=8,
            )
        )
    )


def dashboard_json() -> str:
    dashboard = build_dashboard().build()
    for i, panel in enumerate(dashboard.panels or [], start=1):
        panel.id_val = i  # the builders leave ids unset; Grafana needs them unique for links and repeats
    return JSONEncoder(sort_keys=True, indent=2).encode(dashboard) + "\n"


class _BlockDumper(yaml.SafeDumper):
    """Multi-line strings (PromQL) as `|` blocks, so the manifest reads like the rules file."""


_BlockDumper.add_representer(
    str,
    lambda d, s: d.represent_scalar("tag:yaml.org,2002:str", s, style="|" if "\n" in s else None),
)


def prometheus_rule_yaml() -> str:
    rules = yaml.safe_load(RULES.read_text())
    manifest = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "stable-layers",
            "labels": {"app.kubernetes.io/name": "stable-layers", "app.kubernetes.io/component": "alerts"},
        },
        "spec": {"groups": rules["groups"]},
    }
    header = "# Generated by dashboards/generate.py from observability/alerts.rules.yaml; do not edit.\n"
    return header + yaml.dump(manifest, Dumper=_BlockDumper, sort_keys=False, width=120)


def outputs() -> dict[Path, str]:
    return {DASHBOARD_JSON: dashboard_json(), PROMETHEUS_RULE: prometheus_rule_yaml()}


def panel_queries(dashboard: dict) -> list[tuple[str, str]]:
    """(panel title, expr) of every query target of every panel, rows included."""
    out = []
    for panel in dashboard.get("panels", []):
        for inner in [panel, *panel.get("panels", [])]:
            for target in inner.get("targets") or []:
                if target.get("expr"):
                    out.append((inner.get("title", ""), target["expr"]))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the checked-in files are out of date")
    args = parser.parse_args(argv)
    stale = []
    for path, text in outputs().items():
        if path.exists() and path.read_text() == text:
            continue
        if args.check:
            stale.append(path)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path.relative_to(ROOT)}")
    if stale:
        names = ", ".join(str(p.relative_to(ROOT)) for p in stale)
        print(f"out of date: {names}; run `python dashboards/generate.py`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
