//! The report as a reader sees it: a real run writes `report.html`, headless
//! Chromium (Debian's `chromium`, which scripts/test.sh installs, or
//! `google-chrome`; `SVC_CHROMIUM` names another) loads it
//! from disk with the network unreachable, and the test reads the DOM the
//! browser built. A screenshot is kept in `target/loadtest-report.png`
//! (CI keeps it as an artifact).

mod support;

use std::{path::Path, process::Command};

use scraper::{Html, Selector};
use support::{Behaviour, DECISIVE, run_with};

/// Flags every Chromium run here shares: no sandbox (CI runs as root), no
/// GPU, and every host name unresolvable, so a page that fetched anything
/// would show it as an error.
const CHROMIUM: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--hide-scrollbars",
    "--host-resolver-rules=MAP * ~NOTFOUND",
    "--enable-logging=stderr",
    "--v=0",
];

/// `SVC_CHROMIUM`, else the first of Debian's `chromium` and Google's
/// `google-chrome` on the PATH.
fn browser() -> String {
    if let Ok(path) = std::env::var("SVC_CHROMIUM") {
        return path;
    }
    ["chromium", "google-chrome", "chromium-browser"]
        .into_iter()
        .find(|name| {
            Command::new(name)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .expect("a Chromium on the PATH (scripts/test.sh installs Debian's chromium package)")
        .to_owned()
}

fn chromium(profile: &Path, args: &[&str]) -> (String, String) {
    let output = Command::new(browser())
        .args(CHROMIUM)
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .output()
        .expect("chromium starts");
    assert!(output.status.success(), "chromium: {output:?}");
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn count(dom: &Html, selector: &str) -> usize {
    dom.select(&Selector::parse(selector).unwrap()).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_renders_in_a_real_browser_with_every_table_chart_and_gate() {
    let (outcome, dir) = run_with(Behaviour::Correct, DECISIVE).await;
    let summary = outcome.summary().expect("the run was made");
    let page = dir.path().join("report.html");
    let url = format!("file://{}", page.display());
    let profile = dir.path().join("chromium-profile");

    let (dom, log) = chromium(&profile, &["--dump-dom", &url]);
    let dom = Html::parse_document(&dom);

    // The verdict, and one row per gate with its mark.
    assert_eq!(
        dom.select(&Selector::parse("#verdict").unwrap())
            .next()
            .map(|v| v.text().collect::<String>()),
        Some(summary.verdict.label().to_owned())
    );
    assert_eq!(count(&dom, "table#gates tr.gate"), summary.gates.len());
    for verdict in ["pass", "fail", "inconclusive"] {
        let expected = summary
            .gates
            .iter()
            .filter(|g| format!("{:?}", g.verdict).to_lowercase() == verdict)
            .count();
        assert_eq!(
            count(&dom, &format!("table#gates tr.gate.{verdict}")),
            expected
        );
    }
    // A table per phase, a row per endpoint.
    assert_eq!(count(&dom, "table.phase"), summary.phases.len());
    let endpoints: usize = summary.phases.iter().map(|p| p.endpoints.len()).sum();
    assert_eq!(count(&dom, "table.phase tbody tr"), endpoints);
    // Every row has a cell under each heading.
    let headings = count(&dom, "table.phase thead th") / summary.phases.len();
    assert_eq!(count(&dom, "table.phase tbody td"), headings * endpoints);
    // Throughput, CPU, and per endpoint its percentiles over time and its
    // distribution: each with axes, grid and a legend.
    let charts = 2 + 2 * summary.phases[1].endpoints.len();
    assert_eq!(count(&dom, "svg.chart"), charts);
    assert_eq!(count(&dom, "svg.chart line.axis"), 2 * charts);
    assert!(count(&dom, "svg.chart line.grid") >= 4 * charts);
    assert!(count(&dom, "svg.chart text.label") >= 2 * charts);
    assert!(count(&dom, "svg.chart path.series") >= charts);
    // Phases and warm-ups shaded on the time charts.
    assert!(count(&dom, "svg.chart rect.band-excluded") >= 2);

    // Nothing failed to load or run.
    let problems: Vec<&str> = log
        .lines()
        .filter(|line| {
            line.contains(":CONSOLE")
                || line.contains("Uncaught")
                || line.contains("Failed to load resource")
                || line.contains("ERR_NAME_NOT_RESOLVED")
        })
        .collect();
    assert!(problems.is_empty(), "{problems:#?}");

    // The screenshot, for CI's artifacts and a look by eye.
    let shot = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/loadtest-report.png");
    std::fs::create_dir_all(shot.parent().unwrap()).unwrap();
    let _ = std::fs::remove_file(&shot);
    chromium(
        &profile,
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1100,2600",
            &url,
        ],
    );
    let png = std::fs::read(&shot).expect("the screenshot was written");
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    assert!(
        png.len() > 50_000,
        "an almost empty page: {} bytes",
        png.len()
    );
}
