//! Line and step charts as inline SVG, with axes, units, grid and legend,
//! for the self-contained report.
//!
//! Written here rather than with plotters: its SVG backend lays out axis
//! labels with a font backend (font-kit, which needs the system's
//! fontconfig, or an embedded TTF file), where inline SVG leaves text to the
//! browser, and the whole chart is the ~300 lines below.

use std::fmt::Write as _;

const WIDTH: f64 = 960.0;
const HEIGHT: f64 = 300.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 64.0;
const TOP: f64 = 34.0;
const BOTTOM: f64 = 44.0;

/// Colours that stay apart for the colour-blind (Tableau 10).
pub const PALETTE: [&str; 6] = [
    "#4e79a7", "#f28e2b", "#e15759", "#59a14f", "#b07aa1", "#9c755f",
];

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Style {
    Line,
    /// A stair per bucket, from the previous point's x to this one's, filled below.
    Steps,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Axis {
    Left,
    Right,
}

#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub colour: &'static str,
    pub style: Style,
    pub axis: Axis,
    /// `None` leaves a gap (a second without samples).
    pub points: Vec<(f64, Option<f64>)>,
}

/// A shaded stretch of the x axis: a phase, or the part of it left out.
#[derive(Debug, Clone)]
pub struct Band {
    pub from: f64,
    pub to: f64,
    pub label: String,
    pub excluded: bool,
}

/// A horizontal line at a value of the left axis, e.g. the SLO.
#[derive(Debug, Clone)]
pub struct Rule {
    pub value: f64,
    pub label: String,
}

#[derive(Debug, Clone)]
pub struct Chart {
    /// What the chart shows, for screen readers and the page's tests.
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    /// The right axis's label, when a series uses it.
    pub y2_label: Option<String>,
    pub x_log: bool,
    pub series: Vec<Series>,
    pub bands: Vec<Band>,
    pub rules: Vec<Rule>,
}

/// A linear or logarithmic mapping from data to pixels.
#[derive(Debug, Clone, Copy)]
struct Scale {
    min: f64,
    max: f64,
    log: bool,
    from: f64,
    to: f64,
}

impl Scale {
    fn at(&self, value: f64) -> f64 {
        let (value, min, max) = if self.log {
            (
                value.max(self.min).log10(),
                self.min.log10(),
                self.max.log10(),
            )
        } else {
            (value, self.min, self.max)
        };
        let span = (max - min).max(f64::EPSILON);
        self.from + (value - min) / span * (self.to - self.from)
    }
}

impl Chart {
    pub fn svg(&self) -> String {
        let values = |axis: Axis| {
            self.series
                .iter()
                .filter(move |s| s.axis == axis)
                .flat_map(|s| s.points.iter().filter_map(|p| p.1))
        };
        let left_max = values(Axis::Left)
            .chain(self.rules.iter().map(|r| r.value))
            .fold(0.0, f64::max);
        let right_max = values(Axis::Right).fold(0.0, f64::max);
        let xs = || {
            self.series
                .iter()
                .flat_map(|s| s.points.iter().map(|p| p.0))
        };
        let bands = self.bands.iter().flat_map(|b| [b.from, b.to]);
        let x_min = xs().chain(bands.clone()).fold(f64::INFINITY, f64::min);
        let x_max = xs().chain(bands).fold(f64::NEG_INFINITY, f64::max);
        let (x_min, x_max) = if x_min.is_finite() && x_max > x_min {
            (x_min, x_max)
        } else {
            (0.0, 1.0)
        };
        let x_ticks = if self.x_log {
            log_ticks(x_min.max(1e-3), x_max)
        } else {
            linear_ticks(x_min, x_max)
        };
        let x = Scale {
            min: if self.x_log { x_min.max(1e-3) } else { x_min },
            max: x_max,
            log: self.x_log,
            from: LEFT,
            to: WIDTH - RIGHT,
        };
        let left_ticks = linear_ticks(0.0, nice_ceiling(left_max));
        let y = Scale {
            min: 0.0,
            max: *left_ticks.last().unwrap_or(&1.0),
            log: false,
            from: HEIGHT - BOTTOM,
            to: TOP,
        };
        let right_ticks = linear_ticks(0.0, nice_ceiling(right_max));
        let y2 = Scale {
            max: *right_ticks.last().unwrap_or(&1.0),
            ..y
        };

        let mut svg = format!(
            r#"<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{}" xmlns="http://www.w3.org/2000/svg"><title>{}</title>"#,
            escape(&self.title),
            escape(&self.title)
        );
        self.draw_bands(&mut svg, &x);
        // Grid and axes.
        for &tick in &left_ticks {
            let py = y.at(tick);
            let _ = write!(
                svg,
                r##"<line class="grid" x1="{LEFT}" x2="{:.1}" y1="{py:.1}" y2="{py:.1}"/><text class="tick" x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
                WIDTH - RIGHT,
                LEFT - 6.0,
                py + 4.0,
                tick_label(tick)
            );
        }
        if self.y2_label.is_some() {
            for &tick in &right_ticks {
                let _ = write!(
                    svg,
                    r#"<text class="tick" x="{:.1}" y="{:.1}">{}</text>"#,
                    WIDTH - RIGHT + 6.0,
                    y2.at(tick) + 4.0,
                    tick_label(tick)
                );
            }
        }
        for &tick in &x_ticks {
            let px = x.at(tick);
            let _ = write!(
                svg,
                r#"<line class="grid" x1="{px:.1}" x2="{px:.1}" y1="{TOP}" y2="{:.1}"/><text class="tick" x="{px:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
                HEIGHT - BOTTOM,
                HEIGHT - BOTTOM + 16.0,
                tick_label(tick)
            );
        }
        let _ = write!(
            svg,
            r#"<line class="axis" x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{bottom:.1}"/><line class="axis" x1="{LEFT}" x2="{right:.1}" y1="{bottom:.1}" y2="{bottom:.1}"/><text class="label" x="{:.1}" y="{:.1}" text-anchor="middle">{}</text><text class="label" transform="translate(14 {:.1}) rotate(-90)" text-anchor="middle">{}</text>"#,
            (LEFT + WIDTH - RIGHT) / 2.0,
            HEIGHT - 6.0,
            escape(&self.x_label),
            (TOP + HEIGHT - BOTTOM) / 2.0,
            escape(&self.y_label),
            bottom = HEIGHT - BOTTOM,
            right = WIDTH - RIGHT,
        );
        if let Some(label) = &self.y2_label {
            let _ = write!(
                svg,
                r#"<text class="label" transform="translate({:.1} {:.1}) rotate(90)" text-anchor="middle">{}</text>"#,
                WIDTH - 12.0,
                (TOP + HEIGHT - BOTTOM) / 2.0,
                escape(label)
            );
        }
        for series in &self.series {
            let scale = if series.axis == Axis::Left { &y } else { &y2 };
            draw_series(&mut svg, series, &x, scale);
        }
        for rule in &self.rules {
            let py = y.at(rule.value);
            let _ = write!(
                svg,
                r#"<line class="rule" x1="{LEFT}" x2="{:.1}" y1="{py:.1}" y2="{py:.1}"/><text class="rule-label" x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
                WIDTH - RIGHT,
                WIDTH - RIGHT - 4.0,
                py - 4.0,
                escape(&rule.label)
            );
        }
        // Legend, above the plot.
        let mut legend_x = LEFT;
        for series in &self.series {
            let _ = write!(
                svg,
                r#"<rect x="{legend_x:.1}" y="10" width="12" height="12" fill="{}"/><text class="legend" x="{:.1}" y="20">{}</text>"#,
                series.colour,
                legend_x + 16.0,
                escape(&series.name)
            );
            legend_x += 28.0 + 7.0 * series.name.chars().count() as f64;
        }
        svg.push_str("</svg>");
        svg
    }

    fn draw_bands(&self, svg: &mut String, x: &Scale) {
        for (i, band) in self.bands.iter().enumerate() {
            let (from, to) = (x.at(band.from), x.at(band.to));
            let class = if band.excluded {
                "band-excluded"
            } else if i % 2 == 0 {
                "band-even"
            } else {
                "band-odd"
            };
            let _ = write!(
                svg,
                r#"<rect class="{class}" x="{from:.1}" y="{TOP}" width="{:.1}" height="{:.1}"><title>{}</title></rect>"#,
                (to - from).max(0.0),
                HEIGHT - TOP - BOTTOM,
                escape(&band.label)
            );
            if !band.excluded && to - from > 40.0 {
                let _ = write!(
                    svg,
                    r#"<text class="band-label" x="{:.1}" y="{:.1}">{}</text>"#,
                    from + 4.0,
                    TOP + 12.0,
                    escape(&band.label)
                );
            }
        }
    }
}

fn draw_series(svg: &mut String, series: &Series, x: &Scale, y: &Scale) {
    let mut path = String::new();
    match series.style {
        Style::Line => {
            let mut pen_down = false;
            for &(px, py) in &series.points {
                match py {
                    Some(value) => {
                        let command = if pen_down { 'L' } else { 'M' };
                        let _ = write!(path, "{command}{:.1},{:.1}", x.at(px), y.at(value));
                        pen_down = true;
                    }
                    None => pen_down = false,
                }
            }
            let _ = write!(
                svg,
                r#"<path class="series" d="{path}" stroke="{}" fill="none"><title>{}</title></path>"#,
                series.colour,
                escape(&series.name)
            );
        }
        Style::Steps => {
            let mut previous = None;
            let _ = write!(path, "M{:.1},{:.1}", x.at(x.min), y.at(0.0));
            for &(px, py) in &series.points {
                let value = py.unwrap_or(0.0);
                let start = previous.unwrap_or(x.min);
                let _ = write!(
                    path,
                    "L{:.1},{:.1}L{:.1},{:.1}",
                    x.at(start),
                    y.at(value),
                    x.at(px),
                    y.at(value)
                );
                previous = Some(px);
            }
            let _ = write!(
                path,
                "L{:.1},{:.1}Z",
                x.at(previous.unwrap_or(x.min)),
                y.at(0.0)
            );
            let _ = write!(
                svg,
                r#"<path class="series steps" d="{path}" stroke="{colour}" fill="{colour}" fill-opacity="0.18"><title>{}</title></path>"#,
                escape(&series.name),
                colour = series.colour,
            );
        }
    }
}

/// The smallest 1, 2 or 5 × 10ⁿ at or above `value` (1 for nothing).
fn nice_ceiling(value: f64) -> f64 {
    if value <= 0.0 || !value.is_finite() {
        return 1.0;
    }
    let magnitude = 10f64.powf(value.log10().floor());
    for step in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if value <= step * magnitude * 1.000_001 {
            return step * magnitude;
        }
    }
    10.0 * magnitude
}

/// About five round ticks from `min` to `max`, both included when round.
fn linear_ticks(min: f64, max: f64) -> Vec<f64> {
    let span = (max - min).max(f64::EPSILON);
    let step = nice_ceiling(span / 5.0);
    let first = (min / step).ceil() * step;
    let mut ticks = Vec::new();
    let mut tick = first;
    while tick <= max + step * 1e-9 {
        ticks.push(if tick.abs() < step * 1e-9 { 0.0 } else { tick });
        tick += step;
    }
    if ticks.last().is_none_or(|&last| last < max - step * 1e-9) {
        ticks.push(first + step * ticks.len() as f64);
    }
    ticks
}

/// Powers of ten across the range, with 2 and 5 between when it spans few.
fn log_ticks(min: f64, max: f64) -> Vec<f64> {
    let (low, high) = (min.log10().floor() as i32, max.log10().ceil() as i32);
    let between: &[f64] = if high - low <= 3 {
        &[1.0, 2.0, 5.0]
    } else {
        &[1.0]
    };
    (low..=high)
        .flat_map(|e| between.iter().map(move |m| m * 10f64.powi(e)))
        .filter(|&t| t >= min * 0.999 && t <= max * 1.001)
        .collect()
}

fn tick_label(value: f64) -> String {
    if value == 0.0 {
        "0".to_owned()
    } else if value.abs() >= 10_000.0 {
        format!("{:.0}k", value / 1000.0)
    } else if value.abs() >= 10.0 || value.fract() == 0.0 {
        format!("{value:.0}")
    } else if value.abs() >= 0.1 {
        format!("{value:.1}")
    } else {
        format!("{value}")
    }
}

pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        assert_eq!(linear_ticks(0.0, 10.0), vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        assert_eq!(
            linear_ticks(0.0, 500.0),
            vec![0.0, 100.0, 200.0, 300.0, 400.0, 500.0]
        );
        assert_eq!(nice_ceiling(7.3), 10.0);
        assert_eq!(nice_ceiling(0.42), 0.5);
        assert_eq!(nice_ceiling(0.0), 1.0);
        assert_eq!(log_ticks(0.1, 100.0).first(), Some(&0.1));
        assert!(log_ticks(0.1, 100.0).contains(&50.0));
        assert_eq!(log_ticks(0.1, 100_000.0).len(), 7);
    }

    #[test]
    fn a_chart_has_axes_grid_legend_and_gaps() {
        let chart = Chart {
            title: "latency".into(),
            x_label: "seconds".into(),
            y_label: "ms".into(),
            y2_label: None,
            x_log: false,
            series: vec![Series {
                name: "p95".into(),
                colour: PALETTE[0],
                style: Style::Line,
                axis: Axis::Left,
                points: vec![(0.0, Some(1.0)), (1.0, None), (2.0, Some(3.0))],
            }],
            bands: vec![Band {
                from: 0.0,
                to: 1.0,
                label: "warm-up".into(),
                excluded: true,
            }],
            rules: vec![Rule {
                value: 5.0,
                label: "SLO 5 ms".into(),
            }],
        };
        let svg = chart.svg();
        assert!(svg.contains(r#"aria-label="latency""#));
        assert!(svg.contains(r#"class="grid""#));
        assert!(svg.contains(">seconds</text>") && svg.contains(">ms</text>"));
        assert!(svg.contains(">p95</text>"));
        assert!(svg.contains("SLO 5 ms"));
        // The gap starts a new stroke.
        assert_eq!(svg.matches('M').count(), 2, "{svg}");
    }
}
