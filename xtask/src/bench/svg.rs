//! Horizontal bar charts as hand-written SVG (no plotting crate in xtask).

use std::fmt::Write;

/// One bar.
#[derive(Debug, Clone)]
pub struct Bar {
    /// The label left of the bar.
    pub label: String,
    /// The bar's length.
    pub value: f64,
    /// A whisker from low to high (e.g. min and max), if any.
    pub range: Option<(f64, f64)>,
    /// The text printed after the bar.
    pub text: String,
    /// Draw in the accent colour (this project's rows).
    pub ours: bool,
}

/// A group of bars sharing one axis.
#[derive(Debug, Clone)]
pub struct Panel {
    /// Printed above the bars.
    pub title: String,
    /// Axis unit, printed after the tick labels.
    pub unit: String,
    /// Logarithmic axis (for values spanning decades, like start-up times).
    pub log: bool,
    /// The bars, top to bottom.
    pub bars: Vec<Bar>,
}

const WIDTH: f64 = 820.0;
const LABEL_W: f64 = 200.0;
const PLOT_W: f64 = 470.0;
const BAR_H: f64 = 20.0;
const GAP: f64 = 8.0;
const OURS: &str = "#d9622b";
const OTHERS: &str = "#5b7fa6";

/// Renders the panels one under the other.
pub fn chart(title: &str, panels: &[Panel]) -> String {
    let mut body = String::new();
    let mut y = 58.0;
    for panel in panels {
        y = draw_panel(&mut body, panel, y) + 16.0;
    }
    let mut out = String::new();
    let _ = write!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{y}\" \
         viewBox=\"0 0 {WIDTH} {y}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"10\" y=\"22\" font-size=\"15\" font-weight=\"bold\">{}</text>\n",
        escape(title)
    );
    // The legend, on its own line under the title.
    let _ = write!(
        out,
        "<rect x=\"10\" y=\"30\" width=\"10\" height=\"10\" fill=\"{OURS}\"/>\n\
         <text x=\"24\" y=\"39\" fill=\"#555\">sydney-bundle</text>\n\
         <rect x=\"120\" y=\"30\" width=\"10\" height=\"10\" fill=\"{OTHERS}\"/>\n\
         <text x=\"134\" y=\"39\" fill=\"#555\">others</text>\n"
    );
    out.push_str(&body);
    out.push_str("</svg>\n");
    out
}

fn draw_panel(out: &mut String, panel: &Panel, top: f64) -> f64 {
    let _ = writeln!(
        out,
        "<text x=\"10\" y=\"{}\" font-weight=\"bold\">{}</text>",
        top + 4.0,
        escape(&panel.title)
    );
    let plot_top = top + 14.0;
    let values = panel
        .bars
        .iter()
        .flat_map(|b| [Some(b.value), b.range.map(|r| r.0), b.range.map(|r| r.1)])
        .flatten()
        .filter(|v| v.is_finite() && *v > 0.0);
    let (lo, hi) = values.fold((f64::INFINITY, 0.0f64), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    let axis = Axis::new(panel.log, lo, hi);
    let bottom = plot_top + panel.bars.len() as f64 * (BAR_H + GAP);
    for (tick, label) in axis.ticks() {
        let x = LABEL_W + axis.x(tick);
        let _ = writeln!(
            out,
            "<line x1=\"{x:.1}\" y1=\"{plot_top}\" x2=\"{x:.1}\" y2=\"{bottom}\" stroke=\"#ddd\"/>\n\
             <text x=\"{x:.1}\" y=\"{}\" text-anchor=\"middle\" fill=\"#555\">{label}{}</text>",
            bottom + 14.0,
            if label == "0" {
                ""
            } else {
                panel.unit.as_str()
            }
        );
    }
    for (i, bar) in panel.bars.iter().enumerate() {
        let y = plot_top + i as f64 * (BAR_H + GAP) + GAP / 2.0;
        let mid = y + BAR_H / 2.0;
        let _ = writeln!(
            out,
            "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            LABEL_W - 8.0,
            mid + 4.0,
            escape(&bar.label)
        );
        let width = if bar.value.is_finite() && bar.value > 0.0 {
            axis.x(bar.value).max(1.0)
        } else {
            0.0
        };
        let colour = if bar.ours { OURS } else { OTHERS };
        let _ = writeln!(
            out,
            "<rect x=\"{LABEL_W}\" y=\"{y:.1}\" width=\"{width:.1}\" height=\"{BAR_H}\" fill=\"{colour}\"/>"
        );
        let mut end = width;
        if let Some((low, high)) = bar.range {
            let (x1, x2) = (LABEL_W + axis.x(low), LABEL_W + axis.x(high));
            let _ = writeln!(
                out,
                "<path d=\"M{x1:.1} {mid:.1}H{x2:.1}M{x1:.1} {:.1}V{:.1}M{x2:.1} {:.1}V{:.1}\" \
                 stroke=\"#222\" fill=\"none\"/>",
                mid - 5.0,
                mid + 5.0,
                mid - 5.0,
                mid + 5.0
            );
            end = end.max(x2 - LABEL_W);
        }
        let _ = writeln!(
            out,
            "<text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
            LABEL_W + end + 6.0,
            mid + 4.0,
            escape(&bar.text)
        );
    }
    bottom + 18.0
}

/// Maps values to pixels from the plot's left edge.
struct Axis {
    log: bool,
    lo: f64,
    hi: f64,
}

impl Axis {
    fn new(log: bool, lo: f64, hi: f64) -> Axis {
        if hi.is_nan() || hi <= 0.0 {
            return Axis {
                log: false,
                lo: 0.0,
                hi: 1.0,
            };
        }
        if log {
            let lo = 10f64.powf(lo.log10().floor());
            let hi = 10f64.powf(hi.log10().ceil()).max(lo * 10.0);
            Axis { log, lo, hi }
        } else {
            Axis {
                log,
                lo: 0.0,
                hi: nice_ceiling(hi),
            }
        }
    }

    fn x(&self, value: f64) -> f64 {
        let t = if self.log {
            (value.max(self.lo).log10() - self.lo.log10()) / (self.hi.log10() - self.lo.log10())
        } else {
            value / self.hi
        };
        t.clamp(0.0, 1.0) * PLOT_W
    }

    fn ticks(&self) -> Vec<(f64, String)> {
        if self.log {
            let mut ticks = Vec::new();
            let mut t = self.lo;
            while t <= self.hi * 1.0001 {
                ticks.push((t, trim(t)));
                t *= 10.0;
            }
            ticks
        } else {
            (0..=5)
                .map(|i| {
                    let t = self.hi * f64::from(i) / 5.0;
                    (t, trim(t))
                })
                .collect()
        }
    }
}

/// A round number (1, 1.5, 2, 2.5, 3, 4, 5, 6 or 8 times a power of ten)
/// at least `value`.
fn nice_ceiling(value: f64) -> f64 {
    let power = 10f64.powf(value.log10().floor());
    [1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0]
        .into_iter()
        .map(|m| m * power)
        .find(|&v| v >= value)
        .unwrap_or(10.0 * power)
}

fn trim(value: f64) -> String {
    let text = format!("{value:.3}");
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axes() {
        assert_eq!(nice_ceiling(430.0), 500.0);
        assert_eq!(nice_ceiling(204.5), 250.0);
        assert_eq!(nice_ceiling(0.84), 1.0);
        let log = Axis::new(true, 0.84, 70.0);
        assert_eq!((log.lo, log.hi), (0.1, 100.0));
        assert_eq!(log.ticks().len(), 4);
        assert_eq!(log.x(100.0), PLOT_W);
    }

    #[test]
    fn chart_is_one_svg_document() {
        let svg = chart(
            "t <&>",
            &[Panel {
                title: "p".into(),
                unit: " ms".into(),
                log: true,
                bars: vec![Bar {
                    label: "direct".into(),
                    value: 0.8,
                    range: Some((0.7, 1.1)),
                    text: "0.80 ms".into(),
                    ours: false,
                }],
            }],
        );
        assert!(svg.starts_with("<svg ") && svg.ends_with("</svg>\n"));
        assert!(svg.contains("t &lt;&amp;&gt;"));
    }
}
