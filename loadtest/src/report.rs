//! What a run leaves behind: the table and verdict on stdout, `summary.json`
//! and `report.html` (latency and throughput over time, drawn as inline SVG
//! so it opens offline) in the report folder.

use std::{fmt::Write as _, path::Path};

use serde::Serialize;

use crate::{
    checks::Durability,
    gates::{Gate, Limits},
    measure::{PhaseSummary, TimelinePoint},
};

/// Everything `summary.json` holds; its schema is documented in docs/LOADTEST.md.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Version of this document's layout.
    pub schema: u32,
    pub host: String,
    pub started_at: String,
    /// `closed` (users with think time) or `open` (fixed arrival rate).
    pub model: &'static str,
    pub mix: String,
    pub limits: Limits,
    pub phases: Vec<PhaseSummary>,
    pub durability: Durability,
    pub gates: Vec<Gate>,
    /// `pass` or `fail`.
    pub verdict: &'static str,
}

pub fn table(phases: &[PhaseSummary]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<9} {:<15} {:>9} {:>10} {:>9} {:>9} {:>9} {:>9} {:>8} {:>8} {:>8}",
        "phase",
        "endpoint",
        "requests",
        "req/s",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "max ms",
        "status",
        "timeout",
        "conn"
    );
    for phase in phases {
        for e in &phase.endpoints {
            let _ = writeln!(
                out,
                "{:<9} {:<15} {:>9} {:>10.1} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>8} {:>8} {:>8}",
                phase.name,
                e.endpoint.label(),
                e.requests,
                e.rps,
                e.p50_ms,
                e.p95_ms,
                e.p99_ms,
                e.max_ms,
                e.errors.status,
                e.errors.timeout,
                e.errors.connection
            );
        }
        let _ = write!(
            out,
            "{:<9} {} users, {:.0} s measured after {:.0} s ramp-up and warm-up; generator CPU {:.2} of {} cores",
            "",
            phase.users,
            phase.measured_secs,
            phase.excluded_secs,
            phase.generator_cpu.cores_busy,
            phase.generator_cpu.cores
        );
        if let Some(machine) = phase.machine_cpu {
            let _ = write!(
                out,
                "; whole machine {:.2} busy, {:.2} stolen by the host",
                machine.cores_busy, machine.cores_stolen
            );
        }
        if let Some(disk) = phase.machine_disk {
            let _ = write!(
                out,
                "; slowest disk sync {:.1} ms ({} of {} over 100 ms)",
                disk.slowest_ms, disk.stalls, disk.syncs
            );
        }
        out.push('\n');
    }
    out
}

pub fn verdict_lines(gates: &[Gate]) -> String {
    let mut out = String::new();
    for gate in gates {
        let _ = writeln!(out, "{}", gate.line());
    }
    out
}

pub fn write_files(dir: &Path, summary: &Summary) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let json = serde_json::to_vec_pretty(summary).expect("the summary serialises");
    std::fs::write(dir.join("summary.json"), json)?;
    std::fs::write(dir.join("report.html"), html(summary))?;
    Ok(())
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn html(summary: &Summary) -> String {
    let mut page = String::new();
    let _ = write!(
        page,
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>svc loadtest: {verdict}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;color:#222}}table{{border-collapse:collapse}}td,th{{padding:.25em .6em;border-bottom:1px solid #ddd;text-align:right}}th:first-child,td:first-child,th:nth-child(2),td:nth-child(2){{text-align:left}}.pass{{color:#17803d}}.fail{{color:#c0262d}}pre{{background:#f6f6f6;padding:1em;overflow-x:auto}}svg{{background:#fcfcfc;border:1px solid #ddd}}</style></head><body>
<h1>svc loadtest — <span class="{verdict}">{verdict}</span></h1>
<p>Host {host}, started {started}, {model} model, mix {mix}.</p>"#,
        verdict = summary.verdict,
        host = escape(&summary.host),
        started = summary.started_at,
        model = summary.model,
        mix = summary.mix,
    );
    page.push_str("<h2>Gates</h2><pre>");
    page.push_str(&escape(&verdict_lines(&summary.gates)));
    page.push_str("</pre><h2>Latency over time (ms, per second of intended start)</h2>");
    page.push_str(&chart(summary, Series::Latency));
    page.push_str("<h2>Throughput over time (requests per second)</h2>");
    page.push_str(&chart(summary, Series::Throughput));
    page.push_str("<h2>Figures</h2><pre>");
    page.push_str(&escape(&table(&summary.phases)));
    page.push_str("</pre>");
    let _ = write!(
        page,
        "<h2>Durability</h2><p>{} writes accepted, {} readable, {} lost.</p>",
        summary.durability.accepted,
        summary.durability.persisted,
        summary.durability.lost.len()
    );
    if !summary.durability.lost.is_empty() {
        page.push_str("<pre>");
        for id in &summary.durability.lost {
            let _ = writeln!(page, "{id}");
        }
        page.push_str("</pre>");
    }
    page.push_str(
        r#"<p>goose's own reports: <a href="goose-baseline.html">baseline</a>, <a href="goose-load.html">load</a> (times to response headers, whole milliseconds).</p></body></html>"#,
    );
    page
}

#[derive(Clone, Copy)]
enum Series {
    Latency,
    Throughput,
}

/// A line chart of both phases side by side; the shaded part of each phase
/// is its ramp-up and warm-up, left out of the figures.
fn chart(summary: &Summary, series: Series) -> String {
    const W: f64 = 960.0;
    const H: f64 = 280.0;
    const PAD: f64 = 40.0;
    let total: u64 = summary
        .phases
        .iter()
        .map(|p| p.timeline.len() as u64)
        .sum::<u64>()
        .max(1);
    type Value = fn(&TimelinePoint) -> f64;
    let lines: &[(&str, &str, Value)] = match series {
        Series::Latency => &[
            ("p50", "#4c78a8", |p| p.p50_ms),
            ("p95", "#f58518", |p| p.p95_ms),
            ("p99", "#e45756", |p| p.p99_ms),
        ],
        Series::Throughput => &[
            ("requests", "#4c78a8", |p| p.requests as f64),
            ("errors", "#e45756", |p| p.errors as f64),
        ],
    };
    let mut max: f64 = 0.0;
    for phase in &summary.phases {
        for point in &phase.timeline {
            for (_, _, value) in lines {
                max = max.max(value(point));
            }
        }
    }
    let max = if max > 0.0 { max * 1.1 } else { 1.0 };
    let x = |second: u64| PAD + (second as f64 / total as f64) * (W - 2.0 * PAD);
    let y = |v: f64| H - PAD - (v / max) * (H - 2.0 * PAD);

    let mut svg = format!(
        r#"<svg viewBox="0 0 {W} {H}" width="{W}" height="{H}" xmlns="http://www.w3.org/2000/svg">"#
    );
    let mut offset = 0u64;
    for phase in &summary.phases {
        let excluded = phase.excluded_secs.ceil() as u64;
        let _ = write!(
            svg,
            r##"<rect x="{:.1}" y="{PAD}" width="{:.1}" height="{:.1}" fill="#eee"/><text x="{:.1}" y="{:.1}" font-size="12">{}</text>"##,
            x(offset),
            x(offset + excluded.min(phase.timeline.len() as u64)) - x(offset),
            H - 2.0 * PAD,
            x(offset) + 4.0,
            PAD - 6.0,
            phase.name
        );
        for (_, colour, value) in lines {
            let points: Vec<String> = phase
                .timeline
                .iter()
                .map(|p| format!("{:.1},{:.1}", x(offset + p.second), y(value(p))))
                .collect();
            let _ = write!(
                svg,
                r#"<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{}"/>"#,
                points.join(" ")
            );
        }
        offset += phase.timeline.len() as u64;
    }
    if matches!(series, Series::Latency) && summary.limits.slo_ms < max {
        let _ = write!(
            svg,
            r##"<line x1="{PAD}" x2="{:.1}" y1="{:.1}" y2="{:.1}" stroke="#c0262d" stroke-dasharray="4"/><text x="{:.1}" y="{:.1}" font-size="11" fill="#c0262d">SLO {} ms</text>"##,
            W - PAD,
            y(summary.limits.slo_ms),
            y(summary.limits.slo_ms),
            W - PAD - 70.0,
            y(summary.limits.slo_ms) - 4.0,
            summary.limits.slo_ms
        );
    }
    let _ = write!(
        svg,
        r##"<line x1="{PAD}" x2="{PAD}" y1="{PAD}" y2="{:.1}" stroke="#999"/><text x="4" y="{:.1}" font-size="11">{:.1}</text><text x="4" y="{:.1}" font-size="11">0</text>"##,
        H - PAD,
        PAD + 4.0,
        max,
        H - PAD
    );
    for (i, (line, colour, _)) in lines.iter().enumerate() {
        let _ = write!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" font-size="12" fill="{colour}">{line}</text>"#,
            PAD + 80.0 * i as f64,
            H - 12.0
        );
    }
    svg.push_str("</svg>");
    svg
}
