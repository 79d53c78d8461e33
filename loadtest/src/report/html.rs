//! `report.html`: one self-contained page (no script, no fonts, nothing
//! fetched), readable on screen and on paper. The verdict and the gates
//! first, then the figures as tables, then the charts: throughput, errors
//! and users over time; each endpoint's percentiles over time and its
//! response-time distribution; the machine's and the generator's CPU.

use std::fmt::Write as _;

use super::{
    Summary,
    chart::{Axis, Band, Chart, PALETTE, Rule, Series, Style, escape},
    phase_note,
};
use crate::{
    capacity::Capacity, compare::Comparison, measure::PhaseSummary, mix::Endpoint,
    stats::percentile_name,
};

const STYLE: &str = r#"
:root{--pass:#17803d;--fail:#c0262d;--inconclusive:#a15c00;--muted:#666;--line:#ddd}
*{box-sizing:border-box}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;color:#1d1d1f;margin:0 auto;max-width:1040px;padding:24px}
h1{font-size:26px;margin:0 0 4px}h2{font-size:20px;margin:32px 0 8px;border-bottom:1px solid var(--line);padding-bottom:4px}h3{font-size:16px;margin:20px 0 6px}
.meta{color:var(--muted);margin:0 0 12px}
.badge{display:inline-block;padding:2px 10px;border-radius:4px;color:#fff;font-weight:600;text-transform:uppercase;font-size:14px;vertical-align:middle}
.badge.pass{background:var(--pass)}.badge.fail{background:var(--fail)}.badge.inconclusive,.badge.interrupted{background:var(--inconclusive)}
.banner{border-left:4px solid var(--inconclusive);background:#fff6e5;padding:8px 12px;margin:12px 0}
table{border-collapse:collapse;width:100%;margin:6px 0 12px;font-variant-numeric:tabular-nums}
caption{text-align:left;color:var(--muted);font-size:13px;padding:4px 0;caption-side:bottom}
th,td{padding:4px 8px;border-bottom:1px solid var(--line);text-align:right;vertical-align:top}
th{background:#f5f5f7;font-weight:600}
th.text,td.text{text-align:left}
.ci{display:block;color:var(--muted);font-size:11px;white-space:nowrap}
tr.fail td.verdict{color:var(--fail);font-weight:600}tr.pass td.verdict{color:var(--pass);font-weight:600}tr.inconclusive td.verdict{color:var(--inconclusive);font-weight:600}
td.advice{color:var(--inconclusive);font-size:13px;text-align:left}
dl{display:grid;grid-template-columns:max-content 1fr;gap:2px 16px;margin:8px 0}dt{color:var(--muted)}dd{margin:0}
figure{margin:8px 0 20px;break-inside:avoid}figcaption{color:var(--muted);font-size:13px}
svg.chart{width:100%;height:auto;background:#fff;border:1px solid var(--line)}
svg .grid{stroke:#eee;stroke-width:1}svg .axis{stroke:#888;stroke-width:1}
svg .tick{font-size:11px;fill:#555}svg .label{font-size:12px;fill:#333}svg .legend{font-size:12px;fill:#333}
svg .series{stroke-width:1.6}svg .rule{stroke:var(--fail);stroke-dasharray:5 4}svg .rule-label{font-size:11px;fill:var(--fail)}
svg .band-even{fill:#f3f6fa}svg .band-odd{fill:#f8f4ee}svg .band-excluded{fill:#e4e4e4;opacity:.7}svg .band-label{font-size:11px;fill:#555}
code{font-size:13px}
@media print{body{max-width:none;padding:0;font-size:11pt}h2{break-after:avoid}table,figure{break-inside:avoid}a{color:inherit;text-decoration:none}.noprint{display:none}}
"#;

pub fn page(summary: &Summary) -> String {
    let verdict = summary.verdict.label();
    let mut page = format!(
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1"><title>svc loadtest: {verdict}</title><style>{STYLE}</style></head><body data-verdict="{verdict}">
<h1>svc loadtest <span class="badge {verdict}" id="verdict">{verdict}</span></h1>
<p class="meta">{host} · started {started} · {model} model · mix {mix}</p>"#,
        host = escape(&summary.host),
        started = escape(&summary.started_at),
        model = escape(&summary.model),
        mix = escape(&summary.mix),
    );
    match summary.verdict {
        crate::RunVerdict::Interrupted => page.push_str(
            r#"<p class="banner">Interrupted (Ctrl-C): the figures cover only what ran; the run has no verdict.</p>"#,
        ),
        crate::RunVerdict::Inconclusive => page.push_str(
            r#"<p class="banner">Inconclusive: some gates rest on too few samples to pass or fail. Each says what run would decide it.</p>"#,
        ),
        _ => {}
    }
    gates_table(&mut page, summary);
    if let Some(comparison) = &summary.comparison {
        comparison_table(&mut page, comparison);
    }
    if let Some(capacity) = &summary.capacity {
        capacity_table(&mut page, capacity);
    }
    page.push_str("<h2>Figures</h2>");
    for phase in &summary.phases {
        phase_table(&mut page, summary, phase);
    }
    durability(&mut page, summary);
    page.push_str("<h2>Over time</h2>");
    figure(
        &mut page,
        &throughput_chart(summary),
        "Shaded: each phase; grey: its ramp-up and warm-up, left out of the figures.",
    );
    for endpoint in Endpoint::ALL {
        if let Some(chart) = latency_chart(summary, endpoint) {
            figure(
                &mut page,
                &chart,
                "Per second of intended start; gaps are seconds without a request to this endpoint.",
            );
        }
    }
    figure(
        &mut page,
        &cpu_chart(summary),
        "The machine: every process on it (server, broker, database, cache, generator); stolen: taken by the host.",
    );
    page.push_str("<h2>Response-time distribution</h2>");
    for endpoint in Endpoint::ALL {
        if let Some(chart) = distribution_chart(summary, endpoint) {
            figure(
                &mut page,
                &chart,
                "Share of the measured requests per bucket; buckets grow by a quarter, so the x axis is logarithmic.",
            );
        }
    }
    limits(&mut page, summary);
    page.push_str(
        r#"<p class="meta noprint">goose's own reports of each phase (times to response headers, whole milliseconds) are beside this file: <code>goose-*.html</code>.</p></body></html>"#,
    );
    page
}

fn figure(page: &mut String, chart: &Chart, caption: &str) {
    let _ = write!(
        page,
        "<figure><h3>{}</h3>{}<figcaption>{}</figcaption></figure>",
        escape(&chart.title),
        chart.svg(),
        escape(caption)
    );
}

fn gates_table(page: &mut String, summary: &Summary) {
    page.push_str(
        r#"<h2>Gates</h2><table id="gates"><thead><tr><th class="text">verdict</th><th class="text">gate</th><th class="text">subject</th><th class="text">measured</th><th>samples</th><th class="text">limit</th></tr></thead><tbody>"#,
    );
    for gate in &summary.gates {
        let verdict = format!("{:?}", gate.verdict).to_lowercase();
        let _ = write!(
            page,
            r#"<tr class="gate {verdict}" data-kind="{kind:?}"><td class="text verdict">{label}</td><td class="text">{name}</td><td class="text">{subject}</td><td class="text">{measured}</td><td>{samples}</td><td class="text">{limit}</td></tr>"#,
            kind = gate.kind,
            label = gate.verdict.label(),
            name = gate.kind.name(),
            subject = escape(&gate.subject()),
            measured = escape(&gate.measured),
            samples = gate.samples,
            limit = escape(&gate.limit),
        );
        if let Some(advice) = &gate.advice {
            let _ = write!(
                page,
                r#"<tr class="advice"><td></td><td class="advice" colspan="5">{}</td></tr>"#,
                escape(advice)
            );
        }
    }
    page.push_str(
        "</tbody><caption>A gate on a percentile passes when its whole 95 % interval is under the limit, fails when the whole interval is over it, and is otherwise inconclusive.</caption></table>",
    );
}

fn phase_table(page: &mut String, summary: &Summary, phase: &PhaseSummary) {
    let _ = write!(
        page,
        r#"<h3>{}</h3><table class="phase" data-phase="{}"><thead><tr><th class="text">endpoint</th><th>requests</th><th>req/s</th>"#,
        escape(&phase.name),
        escape(&phase.name)
    );
    for &p in &summary.percentiles {
        let _ = write!(page, "<th>{} ms</th>", percentile_name(p));
    }
    page.push_str("<th>max ms</th><th>status errors</th><th>time-outs</th><th>connection errors</th></tr></thead><tbody>");
    for e in &phase.endpoints {
        let _ = write!(
            page,
            r#"<tr><td class="text">{}</td><td>{}</td><td>{:.1}</td>"#,
            escape(e.endpoint.label()),
            e.requests,
            e.rps
        );
        for &p in &summary.percentiles {
            let estimate = e.percentile(p);
            let high = estimate
                .high_ms
                .map_or_else(|| "unbounded".to_owned(), |h| format!("{h:.2}"));
            let _ = write!(
                page,
                r#"<td>{:.2}<span class="ci">{:.2}–{high}</span></td>"#,
                estimate.ms, estimate.low_ms
            );
        }
        let _ = write!(
            page,
            "<td>{:.2}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            e.max_ms, e.errors.status, e.errors.timeout, e.errors.connection
        );
    }
    let _ = write!(
        page,
        "</tbody><caption>{}. Under each percentile: its 95 % interval.</caption></table>",
        escape(&phase_note(phase))
    );
}

fn comparison_table(page: &mut String, comparison: &Comparison) {
    let _ = write!(
        page,
        r#"<h2>Against the previous run</h2><p class="meta">The run of {} against {}.</p>"#,
        escape(&comparison.previous_started_at),
        escape(&comparison.previous_host)
    );
    for note in &comparison.notes {
        let _ = write!(page, r#"<p class="banner">{}</p>"#, escape(note));
    }
    page.push_str(r#"<table id="comparison"><thead><tr><th class="text">phase</th><th class="text">endpoint</th><th class="text">figure</th><th>previous</th><th>now</th><th>change</th><th class="text">verdict</th></tr></thead><tbody>"#);
    for row in &comparison.rows {
        let _ = write!(
            page,
            r#"<tr class="{}"><td class="text">{}</td><td class="text">{}</td><td class="text">{}</td><td>{:.2}</td><td>{:.2}</td><td>{:+.1} %</td><td class="text verdict">{}</td></tr>"#,
            format!("{:?}", row.verdict).to_lowercase(),
            escape(&row.phase),
            escape(row.endpoint.label()),
            escape(&row.figure),
            row.previous,
            row.current,
            row.change * 100.0,
            row.verdict.label()
        );
    }
    page.push_str("</tbody></table>");
}

fn capacity_table(page: &mut String, capacity: &Capacity) {
    let _ = write!(
        page,
        r#"<h2>Capacity</h2><p><strong>{}</strong>; {}.</p><table id="capacity"><thead><tr><th>rate asked (req/s)</th><th>measured req/s</th><th>worst p95 ms</th><th>worst p99 ms</th><th>errors</th><th>generator cores</th><th>machine cores busy</th><th class="text">verdict</th></tr></thead><tbody>"#,
        capacity.held_rate.map_or_else(
            || "No rate held".to_owned(),
            |rate| format!("{rate} requests/s held")
        ),
        escape(&capacity.reason)
    );
    for step in &capacity.steps {
        let _ = write!(
            page,
            r#"<tr class="{}"><td>{}</td><td>{:.1}</td><td>{:.2}</td><td>{:.2}</td><td>{}</td><td>{:.2}</td><td>{}</td><td class="text verdict">{}</td></tr>"#,
            format!("{:?}", step.verdict).to_lowercase(),
            step.rate,
            step.achieved_rps,
            step.p95_ms,
            step.p99_ms,
            step.errors,
            step.generator_cores,
            step.machine_busy_cores
                .map_or_else(|| "–".to_owned(), |b| format!("{b:.2}")),
            step.verdict.label()
        );
    }
    page.push_str("</tbody></table>");
}

fn durability(page: &mut String, summary: &Summary) {
    page.push_str("<h2>Durability</h2>");
    match &summary.durability {
        None => page.push_str("<p>Not checked: the run was interrupted.</p>"),
        Some(d) => {
            let _ = write!(
                page,
                "<p>{} writes accepted with 202, {} readable after {:.1} s, <strong>{} lost</strong>.</p>",
                d.accepted,
                d.persisted,
                d.drained_after_secs,
                d.lost.len()
            );
            if !d.lost.is_empty() {
                page.push_str(r#"<table id="lost"><thead><tr><th class="text">lost id</th></tr></thead><tbody>"#);
                for id in &d.lost {
                    let _ = write!(page, r#"<tr><td class="text"><code>{id}</code></td></tr>"#);
                }
                page.push_str("</tbody></table>");
            }
        }
    }
}

fn limits(page: &mut String, summary: &Summary) {
    let l = &summary.limits;
    let _ = write!(
        page,
        "<h2>Limits</h2><dl><dt>SLO</dt><dd>p95 and p99 under {} ms</dd><dt>degradation</dt><dd>at most {:.0} % (or {} ms, the noise floor)</dd><dt>error rate</dt><dd>at most {:.3} %</dd><dt>windows</dt><dd>{}</dd><dt>durability</dt><dd>every accepted write readable within {} s</dd><dt>regression</dt><dd>at most {:.0} % against the compared run</dd></dl>",
        l.slo_ms,
        l.max_degradation * 100.0,
        l.noise_floor_ms,
        l.max_error_rate * 100.0,
        if l.window_secs == 0 {
            "off".to_owned()
        } else {
            format!(
                "{} under the SLO in every {} s window of the load phase{}",
                percentile_name(l.window_percentile),
                l.window_secs,
                l.max_slow_secs
                    .map_or_else(String::new, |k| format!(", at most {k} s in a row over it"))
            )
        },
        l.drain_secs,
        l.max_regression * 100.0,
    );
}

/// Where each phase starts on the run's time axis, in seconds.
fn offsets(summary: &Summary) -> Vec<f64> {
    let mut offset = 0.0;
    summary
        .phases
        .iter()
        .map(|phase| {
            let start = offset;
            offset += phase.timeline.len().max(1) as f64;
            start
        })
        .collect()
}

/// Each phase shaded, and its ramp-up and warm-up greyed.
fn bands(summary: &Summary) -> Vec<Band> {
    summary
        .phases
        .iter()
        .zip(offsets(summary))
        .flat_map(|(phase, start)| {
            let end = start + phase.timeline.len().max(1) as f64;
            [
                Band {
                    from: start,
                    to: end,
                    label: phase.name.clone(),
                    excluded: false,
                },
                Band {
                    from: start,
                    to: (start + phase.excluded_secs).min(end),
                    label: format!("{}: ramp-up and warm-up", phase.name),
                    excluded: true,
                },
            ]
        })
        .collect()
}

/// A series over the whole run: `value` of every second of every phase.
fn over_time<T>(
    summary: &Summary,
    points: impl Fn(&PhaseSummary) -> Vec<T>,
    second: impl Fn(&T) -> u64,
    value: impl Fn(&T) -> Option<f64>,
) -> Vec<(f64, Option<f64>)> {
    summary
        .phases
        .iter()
        .zip(offsets(summary))
        .flat_map(|(phase, start)| {
            points(phase)
                .iter()
                .map(|p| (start + second(p) as f64 + 0.5, value(p)))
                .collect::<Vec<_>>()
        })
        .collect()
}

fn line(name: &str, colour: &'static str, axis: Axis, points: Vec<(f64, Option<f64>)>) -> Series {
    Series {
        name: name.to_owned(),
        colour,
        style: Style::Line,
        axis,
        points,
    }
}

fn throughput_chart(summary: &Summary) -> Chart {
    let series = |name, colour, axis, value: fn(&crate::measure::TimelinePoint) -> f64| {
        line(
            name,
            colour,
            axis,
            over_time(
                summary,
                |p| p.timeline.clone(),
                |t| t.second,
                |t| Some(value(t)),
            ),
        )
    };
    Chart {
        title: "Requests, errors and active users per second".into(),
        x_label: "seconds since the first phase began".into(),
        y_label: "requests per second".into(),
        y2_label: Some("active users".into()),
        x_log: false,
        series: vec![
            series("requests/s", PALETTE[0], Axis::Left, |t| t.requests as f64),
            series("errors/s", PALETTE[2], Axis::Left, |t| t.errors as f64),
            series("active users", PALETTE[3], Axis::Right, |t| t.users as f64),
        ],
        bands: bands(summary),
        rules: Vec::new(),
    }
}

fn latency_chart(summary: &Summary, endpoint: Endpoint) -> Option<Chart> {
    let timelines = |phase: &PhaseSummary| {
        phase
            .endpoint(endpoint)
            .map(|e| e.timeline.clone())
            .unwrap_or_default()
    };
    if summary
        .phases
        .iter()
        .all(|p| p.endpoint(endpoint).is_none())
    {
        return None;
    }
    type Figure = fn(&crate::measure::EndpointPoint) -> f64;
    let figures: [(&str, &'static str, Figure); 3] = [
        ("p50", PALETTE[0], |p| p.p50_ms),
        ("p95", PALETTE[1], |p| p.p95_ms),
        ("p99", PALETTE[2], |p| p.p99_ms),
    ];
    let series: Vec<Series> = figures
        .iter()
        .map(|&(name, colour, figure)| {
            line(
                name,
                colour,
                Axis::Left,
                over_time(
                    summary,
                    timelines,
                    |p| p.second,
                    |p| (p.requests > 0).then(|| figure(p)),
                ),
            )
        })
        .collect();
    let highest = series
        .iter()
        .flat_map(|s| s.points.iter().filter_map(|p| p.1))
        .fold(0.0, f64::max);
    // The SLO is drawn when the figures come near it; far above them it
    // would flatten every line to the axis.
    let rules = if highest >= summary.limits.slo_ms / 5.0 {
        vec![Rule {
            value: summary.limits.slo_ms,
            label: format!("SLO {} ms", summary.limits.slo_ms),
        }]
    } else {
        Vec::new()
    };
    Some(Chart {
        title: format!("Response times of {} over time", endpoint.label()),
        x_label: "seconds since the first phase began".into(),
        y_label: "milliseconds".into(),
        y2_label: None,
        x_log: false,
        series,
        bands: bands(summary),
        rules,
    })
}

fn cpu_chart(summary: &Summary) -> Chart {
    let cpu = |phase: &PhaseSummary| phase.cpu.clone();
    Chart {
        title: "CPU of the machine and of the load generator".into(),
        x_label: "seconds since the first phase began".into(),
        y_label: "cores busy".into(),
        y2_label: None,
        x_log: false,
        series: vec![
            line(
                "machine busy",
                PALETTE[0],
                Axis::Left,
                over_time(summary, cpu, |s| s.second, |s| s.machine_busy_cores),
            ),
            line(
                "generator",
                PALETTE[1],
                Axis::Left,
                over_time(summary, cpu, |s| s.second, |s| Some(s.generator_cores)),
            ),
            line(
                "stolen by the host",
                PALETTE[2],
                Axis::Left,
                over_time(summary, cpu, |s| s.second, |s| s.machine_stolen_cores),
            ),
        ],
        bands: bands(summary),
        rules: Vec::new(),
    }
}

fn distribution_chart(summary: &Summary, endpoint: Endpoint) -> Option<Chart> {
    let series: Vec<Series> = summary
        .phases
        .iter()
        .zip(PALETTE.iter().cycle())
        .filter_map(|(phase, &colour)| {
            let e = phase.endpoint(endpoint)?;
            let total = e.distribution.iter().map(|b| b.count).sum::<u64>().max(1) as f64;
            Some(Series {
                name: phase.name.clone(),
                colour,
                style: Style::Steps,
                axis: Axis::Left,
                points: e
                    .distribution
                    .iter()
                    .map(|b| (b.le_ms, Some(b.count as f64 * 100.0 / total)))
                    .collect(),
            })
        })
        .collect();
    (!series.is_empty()).then(|| Chart {
        title: format!("Response-time distribution of {}", endpoint.label()),
        x_label: "milliseconds (logarithmic)".into(),
        y_label: "% of requests".into(),
        y2_label: None,
        x_log: true,
        series,
        bands: Vec::new(),
        rules: Vec::new(),
    })
}
