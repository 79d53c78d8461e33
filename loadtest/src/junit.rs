//! `--junit FILE`: every gate as a JUnit test case, the format CI systems
//! (GitHub, GitLab, Jenkins) show as a test report: a failed gate is a
//! failure, an inconclusive one is skipped with its advice.

use std::fmt::Write as _;

use crate::{report::Summary, stats::Verdict};

pub fn write(path: &std::path::Path, summary: &Summary, seconds: f64) -> std::io::Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(path, render(summary, seconds))
}

fn render(summary: &Summary, seconds: f64) -> String {
    let count = |verdict| {
        summary
            .gates
            .iter()
            .filter(|g| g.verdict == verdict)
            .count()
    };
    let mut xml = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        xml,
        r#"<testsuites name="svc loadtest" tests="{tests}" failures="{failures}" skipped="{skipped}" time="{seconds:.1}">"#,
        tests = summary.gates.len(),
        failures = count(Verdict::Fail),
        skipped = count(Verdict::Inconclusive),
    );
    let _ = writeln!(
        xml,
        r#"  <testsuite name="{}" tests="{}" failures="{}" skipped="{}" timestamp="{}" time="{seconds:.1}">"#,
        escape(&format!("svc loadtest against {}", summary.host)),
        summary.gates.len(),
        count(Verdict::Fail),
        count(Verdict::Inconclusive),
        escape(&summary.started_at),
    );
    for gate in &summary.gates {
        let subject = gate.subject();
        let name = if subject.is_empty() {
            gate.kind.name().to_owned()
        } else {
            format!("{} {subject}", gate.kind.name())
        };
        let text = format!(
            "{} (n = {}; limit: {})",
            gate.measured, gate.samples, gate.limit
        );
        let _ = write!(
            xml,
            r#"    <testcase classname="loadtest.{}" name="{}" time="0">"#,
            escape(&format!("{:?}", gate.kind).to_lowercase()),
            escape(&name)
        );
        match gate.verdict {
            Verdict::Pass => {
                let _ = write!(xml, "<system-out>{}</system-out>", escape(&text));
            }
            Verdict::Fail => {
                let _ = write!(
                    xml,
                    r#"<failure message="{}" type="gate">{}</failure>"#,
                    escape(&gate.measured),
                    escape(&text)
                );
            }
            Verdict::Inconclusive => {
                let advice = gate.advice.clone().unwrap_or_default();
                let _ = write!(
                    xml,
                    r#"<skipped message="inconclusive: {}"/><system-out>{}</system-out>"#,
                    escape(&advice),
                    escape(&text)
                );
            }
        }
        xml.push_str("</testcase>\n");
    }
    xml.push_str("  </testsuite>\n</testsuites>\n");
    xml
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
