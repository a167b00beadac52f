"""The escalation report as one self-contained HTML page: inline SVG charts, no script.

The page carries the dashboard's stylesheet (webhooks/static/dashboard.css) inline, so it looks
like the dashboard and opens offline from a file or a mail attachment. Every bar is an SVG
``rect`` with a ``title`` (shown on hover, read by screen readers) saying what it counts, and
``data-`` attributes with the raw value; the number is also written beside or above it, and each
chart is followed by its table.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from importlib import resources
from typing import Any

from escalier.report import Report, Table, format_value, summary_lines

__all__ = ["render_html"]

# The dashboard's tier colours, then more of the same palette.
_TIER_COLOURS = ("#54aeff", "#bf8700", "#cf222e", "#8250df", "#1a7f37", "#59636e")
_PATH_COLOURS = {"internal": "#0969da", "functional": "#8250df", "hierarchical": "#bf8700"}
_BAR = "#0969da"
_BAR_LIGHT = "#9cc7f5"

_CSS = """
main > section.report { background: var(--paper); }
figure.chart { margin: .2em 0 1em; overflow-x: auto; }
figure.chart figcaption { color: var(--muted); font-size: .9em; margin: .3em 0 0; }
svg.chart { display: block; max-width: 100%; height: auto; font: 12px system-ui, -apple-system,
  "Segoe UI", "DejaVu Sans", sans-serif; }
svg.chart text { fill: var(--ink); }
svg.chart text.muted, svg.chart text.axis { fill: var(--muted); }
svg.chart line.grid { stroke: var(--line); }
svg.chart rect:hover { opacity: .8; }
ul.legend { list-style: none; display: flex; gap: 1em; flex-wrap: wrap; padding: 0; margin: 0 0 .4em; }
ul.legend li::before { content: ""; display: inline-block; width: .9em; height: .9em;
  margin-right: .35em; vertical-align: -.1em; border-radius: 2px; background: var(--swatch); }
details.data summary { cursor: pointer; color: var(--accent); margin: .2em 0 .4em; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
.grid2 { display: grid; grid-template-columns: repeat(auto-fit, minmax(600px, 1fr)); gap: 0 1.5em; }
p.note { color: var(--muted); font-size: .9em; margin: .2em 0 .6em; }
"""


def render_html(report: Report) -> str:
    """The whole page."""
    css = resources.files("escalier.webhooks").joinpath("static/dashboard.css").read_text("utf-8")
    w = report.window
    zone = w.zone
    since = w.since.astimezone(zone).strftime("%Y-%m-%d %H:%M") if w.since else "the beginning"
    until = w.until.astimezone(zone).strftime("%Y-%m-%d %H:%M")
    t = report.tables
    parts = [
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        "<title>Escalation report · Escalier</title>\n",
        f"<style>\n{css}\n{_CSS}</style>\n</head>\n<body>\n",
        "<header class=\"top\"><span class=\"brand\">Escalier</span>"
        "<span class=\"what\">escalation report</span>"
        f"<span class=\"asof\">{escape(since)} to {escape(until)} ({escape(w.timezone)})</span></header>\n",
        "<main>\n<h1>Escalation report</h1>\n",
        _summary(report),
        _section("flow", "Escalations over time, by path", [
            _columns_chart("chart-flow", t["flow"], [
                ("internal", "internal", _PATH_COLOURS["internal"]),
                ("functional", "functional", _PATH_COLOURS["functional"]),
                ("hierarchical", "hierarchical", _PATH_COLOURS["hierarchical"]),
            ], f"Escalations per {report.by}, stacked by path."),
            _table(t["flow"]),
        ]),
        _section("by-tier", "Escalations over time, by tier reached", [
            _columns_chart("chart-tiers", t["escalations_by_tier"], [
                (f"tier_{tier}", f"tier {tier}", _TIER_COLOURS[n % len(_TIER_COLOURS)])
                for n, tier in enumerate(report.tiers)
            ], f"Escalations per {report.by}, stacked by the tier they reached."),
            _table(t["escalations_by_tier"]),
        ]),
        _section("times", "Times per tier", [
            "<div class=\"grid2\">",
            *(_times_chart(t["times"], measure) for measure in (
                "time to acknowledge", "time to escalate", "time in tier", "time to resolve")),
            "</div>",
            f"<p class=\"note\">Medians and 90th percentiles: {escape(report.quantile_method)}. "
            "Wall-clock time.</p>",
            _table(t["times"]),
            _table(t["tiers"]),
        ]),
        _section("sla", "SLA breaches and warnings", [
            "<div class=\"grid2\">",
            _bars_chart("chart-breach-rate", "Breach rate per tier (stays with a breached clock)", [
                (row["tier"], row["breach_rate"] or 0.0, "rate",
                 f"{format_value(row['breach_rate'], 'rate')} ({row['breached']} of {row['stays']} stays)",
                 {"tier": row["tier"], "breached": row["breached"], "stays": row["stays"]})
                for row in t["sla"].rows
            ], maximum=1.0),
            _stacked_bars_chart("chart-warnings", "Warned clocks: what came after the warning", t["sla"], "tier", [
                ("acted_on", "acted on", "#1a7f37"),
                ("breached_anyway", "breached anyway", "#8c1018"),
                ("pending", "pending", "#8c959f"),
            ]),
            "</div>",
            _table(t["sla"]),
        ]),
        _section("outcomes", "De-escalations and ping-pong", [
            _bars_chart("chart-deescalations", "De-escalations by rule", [
                (row["why"], row["count"], "int", f"{row['count']} (median {format_value(row['median_s'], 'seconds')} above)",
                 {"why": row["why"]})
                for row in t["deescalations"].rows
            ]),
            _table(t["deescalations"]),
            _table(t["ping_pong"]),
        ]),
        _section("behind", "Behind the escalations", [
            "<div class=\"grid2\">",
            *(_bars_chart(f"chart-{name.replace('_', '-')}", t[name].title, [
                (row[key], row["escalations"], "int",
                 f"{row['escalations']} ({format_value(row['share'], 'rate')})", {key: row[key]})
                for row in t[name].rows
            ]) for name, key in (("top_tags", "tag"), ("top_components", "component"),
                                 ("top_organizations", "organization"))),
            "</div>",
        ]),
        _section("load", "Load", [
            "<div class=\"grid2\">",
            _bars_chart("chart-teams", "Stays per team", [
                (row["team"], row["stays"] or row["raised"], "int",
                 f"{row['stays']} stays" if row["stays"] else f"{row['raised']} raised",
                 {"team": row["team"], "hours": row["hours"]})
                for row in t["teams"].rows
            ]),
            _bars_chart("chart-people", "Entries per person", [
                (row["person"], row["total"], "int",
                 f"{row['total']} ({row['acknowledged']} ack, {row['resolved']} resolved)",
                 {"person": row["person"]})
                for row in t["people"].rows
            ]),
            "</div>",
            _table(t["teams"]),
            _table(t["people"]),
        ]),
        "</main>\n<footer>Generated "
        f"{escape(report.generated_at.strftime('%Y-%m-%d %H:%M'))} UTC from {escape(report.store)}: "
        f"{report.entries:,} audit entries of {report.escalations_read:,} escalations.</footer>\n"
        "</body>\n</html>\n",
    ]
    return "".join(parts)


def _summary(report: Report) -> str:
    items = []
    for key, label, shown in summary_lines(report):
        items.append(f"<div data-figure=\"{escape(key)}\"><dt>{escape(label.strip())}</dt>"
                     f"<dd>{escape(shown)}</dd></div>")
    return ("<section class=\"summary\" aria-label=\"Key figures\"><dl class=\"figures\">"
            + "".join(items) + "</dl></section>\n")


def _section(anchor: str, title: str, parts: Sequence[str]) -> str:
    return (f"<section class=\"report\" id=\"{anchor}\" aria-labelledby=\"{anchor}-title\">"
            f"<h2 id=\"{anchor}-title\">{escape(title)}</h2>\n" + "\n".join(parts) + "\n</section>\n")


def _table(table: Table) -> str:
    rows = []
    for row in table.rows:
        cells = []
        for n, column in enumerate(table.columns):
            value = escape(format_value(row.get(column.key), column.type))
            numeric = column.type in ("int", "number", "rate", "seconds")
            tag = "th scope=\"row\"" if n == 0 else "td"
            cls = " class=\"num\"" if numeric else ""
            cells.append(f"<{tag}{cls}>{value}</{tag.split()[0]}>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    numeric = ("int", "number", "rate", "seconds")
    head = "".join(
        (f"<th scope=\"col\" class=\"num\">{escape(c.label)}</th>" if c.type in numeric
         else f"<th scope=\"col\">{escape(c.label)}</th>")
        for c in table.columns
    )
    body = "".join(rows) if rows else f"<tr><td colspan=\"{len(table.columns)}\" class=\"empty\">none</td></tr>"
    return (f"<details class=\"data\" open><summary>{escape(table.title)}</summary>"
            f"<p class=\"note\">{escape(table.note)}</p>"
            f"<table id=\"table-{escape(table.name)}\" data-table=\"{escape(table.name)}\">"
            f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></details>")


def _attrs(values: dict[str, Any]) -> str:
    return "".join(f" data-{escape(k.replace('_', '-'))}=\"{escape(str(v))}\"" for k, v in values.items())


def _legend(series: Sequence[tuple[str, str, str]]) -> str:
    return "<ul class=\"legend\">" + "".join(
        f"<li style=\"--swatch: {colour}\">{escape(label)}</li>" for _, label, colour in series
    ) + "</ul>"


def _nice_max(value: float) -> float:
    """A round number at or above ``value`` for an axis."""
    if value <= 0:
        return 1.0
    magnitude = 10 ** (len(str(int(value))) - 1)
    for step in (1, 2, 2.5, 5, 10):
        if step * magnitude >= value:
            return step * magnitude
    return 10.0 * magnitude


def _columns_chart(chart_id: str, table: Table, series: Sequence[tuple[str, str, str]], caption: str) -> str:
    """Stacked columns, one per bucket, with the stack's total above it."""
    rows = table.rows
    if not rows:
        return "<p class=\"empty\">Nothing in this period.</p>"
    width_each = max(8.0, min(48.0, 900.0 / len(rows)))
    left, top, plot_h, bottom = 44.0, 16.0, 200.0, 46.0
    width = left + width_each * len(rows) + 12
    totals = [sum(row.get(key, 0) or 0 for key, _, _ in series) for row in rows]
    top_value = _nice_max(max(totals) if totals else 0)
    scale = plot_h / top_value
    out = [f"<figure class=\"chart\" id=\"{chart_id}\">", _legend(series),
           f"<svg class=\"chart\" role=\"img\" aria-label=\"{escape(caption)}\" "
           f"viewBox=\"0 0 {width:.0f} {top + plot_h + bottom:.0f}\" width=\"{width:.0f}\" "
           f"height=\"{top + plot_h + bottom:.0f}\" xmlns=\"http://www.w3.org/2000/svg\">"]
    for n in range(5):
        value = top_value * n / 4
        y = top + plot_h - value * scale
        out.append(f"<line class=\"grid\" x1=\"{left}\" x2=\"{width - 8:.0f}\" y1=\"{y:.1f}\" y2=\"{y:.1f}\"/>"
                   f"<text class=\"axis\" x=\"{left - 6}\" y=\"{y + 4:.1f}\" text-anchor=\"end\">"
                   f"{value:g}</text>")
    every = max(1, round(len(rows) / 12))
    for n, row in enumerate(rows):
        x = left + n * width_each
        y = top + plot_h
        bucket = row["bucket"]
        for key, label, colour in series:
            value = row.get(key, 0) or 0
            if not value:
                continue
            h = value * scale
            y -= h
            out.append(
                f"<rect x=\"{x + 2:.1f}\" y=\"{y:.1f}\" width=\"{width_each - 4:.1f}\" height=\"{h:.1f}\" "
                f"fill=\"{colour}\"{_attrs({'series': key, 'bucket': bucket, 'value': value})}>"
                f"<title>{escape(bucket)} · {escape(label)}: {value}</title></rect>"
            )
        if totals[n]:
            out.append(f"<text class=\"total\" x=\"{x + width_each / 2:.1f}\" y=\"{y - 3:.1f}\" "
                       f"text-anchor=\"middle\"{_attrs({'bucket': bucket, 'total': totals[n]})}>"
                       f"{totals[n]}</text>")
        if n % every == 0:
            out.append(f"<text class=\"axis\" x=\"{x + width_each / 2:.1f}\" y=\"{top + plot_h + 14:.1f}\" "
                       f"text-anchor=\"end\" transform=\"rotate(-35 {x + width_each / 2:.1f} "
                       f"{top + plot_h + 14:.1f})\">{escape(bucket[5:] if len(rows) > 1 else bucket)}</text>")
    out.append(f"</svg><figcaption>{escape(caption)}</figcaption></figure>")
    return "".join(out)


def _bars_chart(
    chart_id: str, title: str, rows: Sequence[tuple[str, float, str, str, dict[str, Any]]],
    *, maximum: float | None = None,
) -> str:
    """Horizontal bars: ``(label, value, type, shown, data)`` each, the shown text beside it."""
    if not rows:
        return (f"<figure class=\"chart\" id=\"{chart_id}\"><figcaption>{escape(title)}</figcaption>"
                "<p class=\"empty\">None in this period.</p></figure>")
    label_w, bar_w, row_h = 200.0, 240.0, 24.0
    width = label_w + bar_w + 160
    height = row_h * len(rows) + 8
    top_value = maximum or max(value for _, value, _, _, _ in rows) or 1.0
    out = [f"<figure class=\"chart\" id=\"{chart_id}\">",
           f"<svg class=\"chart\" role=\"img\" aria-label=\"{escape(title)}\" viewBox=\"0 0 {width:.0f} "
           f"{height:.0f}\" width=\"{width:.0f}\" height=\"{height:.0f}\" xmlns=\"http://www.w3.org/2000/svg\">"]
    for n, (label, value, kind, shown, data) in enumerate(rows):
        y = 4 + n * row_h
        w = max(1.0, bar_w * float(value) / top_value) if value else 0.0
        short = label if len(label) <= 30 else label[:29] + "…"
        out.append(
            f"<text x=\"{label_w - 8}\" y=\"{y + 15:.1f}\" text-anchor=\"end\">{escape(short)}</text>"
            f"<rect x=\"{label_w}\" y=\"{y + 3:.1f}\" width=\"{w:.1f}\" height=\"{row_h - 8:.1f}\" fill=\"{_BAR}\""
            f"{_attrs({**data, 'value': value})}><title>{escape(label)}: {escape(shown)}</title></rect>"
            f"<text class=\"value\" x=\"{label_w + w + 6:.1f}\" y=\"{y + 15:.1f}\""
            f"{_attrs({'value': value})}>{escape(shown)}</text>"
        )
    out.append(f"</svg><figcaption>{escape(title)}</figcaption></figure>")
    return "".join(out)


def _stacked_bars_chart(
    chart_id: str, title: str, table: Table, label_key: str, series: Sequence[tuple[str, str, str]]
) -> str:
    """Horizontal bars stacked from ``series``, one per row of ``table``."""
    rows = [row for row in table.rows if sum(row.get(key, 0) or 0 for key, _, _ in series)]
    if not rows:
        return (f"<figure class=\"chart\" id=\"{chart_id}\"><figcaption>{escape(title)}</figcaption>"
                "<p class=\"empty\">None in this period.</p></figure>")
    label_w, bar_w, row_h = 200.0, 280.0, 24.0
    width = label_w + bar_w + 120
    height = row_h * len(rows) + 8
    top_value = max(sum(row.get(key, 0) or 0 for key, _, _ in series) for row in rows)
    out = [f"<figure class=\"chart\" id=\"{chart_id}\">", _legend(series),
           f"<svg class=\"chart\" role=\"img\" aria-label=\"{escape(title)}\" viewBox=\"0 0 {width:.0f} "
           f"{height:.0f}\" width=\"{width:.0f}\" height=\"{height:.0f}\" xmlns=\"http://www.w3.org/2000/svg\">"]
    for n, row in enumerate(rows):
        y = 4 + n * row_h
        label = str(row[label_key])
        out.append(f"<text x=\"{label_w - 8}\" y=\"{y + 15:.1f}\" text-anchor=\"end\">{escape(label)}</text>")
        x = label_w
        for key, name, colour in series:
            value = row.get(key, 0) or 0
            if not value:
                continue
            w = bar_w * value / top_value
            out.append(
                f"<rect x=\"{x:.1f}\" y=\"{y + 3:.1f}\" width=\"{w:.1f}\" height=\"{row_h - 8:.1f}\" "
                f"fill=\"{colour}\"{_attrs({label_key: label, 'series': key, 'value': value})}>"
                f"<title>{escape(label)} · {escape(name)}: {value}</title></rect>"
                f"<text x=\"{x + w / 2:.1f}\" y=\"{y + 15:.1f}\" text-anchor=\"middle\" "
                f"style=\"fill: #fff\">{value}</text>"
            )
            x += w
    out.append(f"</svg><figcaption>{escape(title)}</figcaption></figure>")
    return "".join(out)


def _times_chart(table: Table, measure: str) -> str:
    """Per tier: a bar to the median and a lighter one to the 90th percentile, both labelled."""
    rows = [row for row in table.rows if row["measure"] == measure and row["tier"] != "all"]
    chart_id = "chart-" + measure.replace(" ", "-")
    if not any(row["count"] for row in rows):
        return (f"<figure class=\"chart\" id=\"{chart_id}\"><figcaption>{escape(measure)}</figcaption>"
                "<p class=\"empty\">None in this period.</p></figure>")
    label_w, bar_w, row_h = 170.0, 200.0, 34.0
    width = label_w + bar_w + 230
    height = row_h * len(rows) + 8
    top_value = max((row["p90_s"] or 0) for row in rows) or 1.0
    out = [f"<figure class=\"chart\" id=\"{chart_id}\">",
           f"<svg class=\"chart\" role=\"img\" aria-label=\"{escape(measure)} per tier, median and p90\" "
           f"viewBox=\"0 0 {width:.0f} {height:.0f}\" width=\"{width:.0f}\" height=\"{height:.0f}\" "
           "xmlns=\"http://www.w3.org/2000/svg\">"]
    for n, row in enumerate(rows):
        y = 4 + n * row_h
        tier = row["tier"]
        out.append(f"<text x=\"{label_w - 8}\" y=\"{y + 18:.1f}\" text-anchor=\"end\">{escape(tier)}</text>")
        if not row["count"]:
            out.append(f"<text class=\"muted\" x=\"{label_w}\" y=\"{y + 18:.1f}\">none</text>")
            continue
        median, p90 = row["median_s"] or 0.0, row["p90_s"] or 0.0
        for stat, value, colour, offset in (("p90", p90, _BAR_LIGHT, 0), ("median", median, _BAR, 0)):
            w = max(1.0, bar_w * value / top_value) if value else 0.0
            out.append(
                f"<rect x=\"{label_w}\" y=\"{y + 5 + offset:.1f}\" width=\"{w:.1f}\" height=\"{row_h - 14:.1f}\" "
                f"fill=\"{colour}\"{_attrs({'measure': measure, 'tier': tier, 'stat': stat, 'value': value, 'count': row['count']})}>"
                f"<title>{escape(tier)} · {escape(measure)} {stat}: {format_value(value, 'seconds')} "
                f"({row['count']} measured)</title></rect>"
            )
        w = bar_w * p90 / top_value
        out.append(f"<text class=\"value\" x=\"{label_w + w + 6:.1f}\" y=\"{y + 18:.1f}\">median "
                   f"{format_value(median, 'seconds')} · p90 {format_value(p90, 'seconds')} · n={row['count']}</text>")
    out.append(f"</svg><figcaption>{escape(measure.capitalize())}: median (dark) and 90th percentile "
               "(light), per tier.</figcaption></figure>")
    return "".join(out)
