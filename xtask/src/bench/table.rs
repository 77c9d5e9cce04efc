//! Markdown tables and the number formats the tables share.

/// A markdown table with a heading and notes printed under it.
#[derive(Debug, Clone)]
pub struct Table {
    /// The heading (printed as `### title`).
    pub title: String,
    /// Column names; a name starting with `>` is right-aligned (the `>` is
    /// not printed).
    columns: Vec<String>,
    /// One cell per column.
    rows: Vec<Vec<String>>,
    /// Lines printed after the table.
    notes: Vec<String>,
}

impl Table {
    /// A table with these columns (`">name"` for right-aligned numbers).
    pub fn new(title: impl Into<String>, columns: &[&str]) -> Table {
        Table {
            title: title.into(),
            columns: columns.iter().map(|c| (*c).to_owned()).collect(),
            rows: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// Adds a row; missing cells are left empty, extra ones dropped.
    pub fn row(&mut self, cells: Vec<String>) {
        let mut cells = cells;
        cells.resize(self.columns.len(), String::new());
        self.rows.push(cells);
    }

    /// Adds the row of something that could not be measured: its label,
    /// "-" in every measurement column, and the reason in the last one.
    pub fn unmeasured(&mut self, label: impl Into<String>, reason: &str) {
        let mut cells = vec!["-".to_owned(); self.columns.len()];
        cells[0] = label.into();
        if let Some(last) = cells.last_mut() {
            *last = format!("not measured: {reason}");
        }
        self.rows.push(cells);
    }

    /// Adds a line under the table.
    pub fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    /// The table as markdown, padded so it also reads well as plain text.
    pub fn render(&self) -> String {
        let names: Vec<&str> = self
            .columns
            .iter()
            .map(|c| c.strip_prefix('>').unwrap_or(c))
            .collect();
        let right: Vec<bool> = self.columns.iter().map(|c| c.starts_with('>')).collect();
        let mut widths: Vec<usize> = names.iter().map(|n| n.chars().count().max(3)).collect();
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let line = |cells: &[&str]| {
            let padded: Vec<String> = cells
                .iter()
                .zip(&widths)
                .zip(&right)
                .map(|((cell, &width), &right)| {
                    let fill = " ".repeat(width - cell.chars().count());
                    if right {
                        format!("{fill}{cell}")
                    } else {
                        format!("{cell}{fill}")
                    }
                })
                .collect();
            format!("| {} |\n", padded.join(" | "))
        };
        let mut out = format!("### {}\n\n", self.title);
        out.push_str(&line(&names));
        let rule: Vec<String> = widths
            .iter()
            .zip(&right)
            .map(|(&width, &right)| {
                if right {
                    format!("{}:", "-".repeat(width - 1))
                } else {
                    "-".repeat(width)
                }
            })
            .collect();
        out.push_str(&format!("| {} |\n", rule.join(" | ")));
        for row in &self.rows {
            let cells: Vec<&str> = row.iter().map(String::as_str).collect();
            out.push_str(&line(&cells));
        }
        if !self.notes.is_empty() {
            out.push('\n');
            for note in &self.notes {
                out.push_str(note);
                out.push('\n');
            }
        }
        out
    }
}

/// Milliseconds with two or three significant digits: `0.84`, `12.5`, `70`.
pub fn ms(value: f64) -> String {
    if value < 10.0 {
        format!("{value:.2}")
    } else if value < 100.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.0}")
    }
}

/// A ratio: `1.21x`.
pub fn ratio(value: f64) -> String {
    if value.is_finite() {
        format!("{value:.2}x")
    } else {
        "-".to_owned()
    }
}

/// Seconds: `3.42`.
pub fn secs(value: f64) -> String {
    format!("{value:.2}")
}

/// A throughput or size in the unit the column names: `123.4`.
pub fn num1(value: f64) -> String {
    format!("{value:.1}")
}

/// `met` or `missed`.
pub fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "missed" }
}

/// Median of the values (mean of the middle two for an even count).
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// Smallest value.
pub fn min(values: &[f64]) -> f64 {
    values.iter().copied().fold(f64::INFINITY, f64::min)
}

/// Largest value.
pub fn max(values: &[f64]) -> f64 {
    values.iter().copied().fold(f64::NEG_INFINITY, f64::max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_aligned_markdown() {
        let mut table = Table::new("T", &["name", ">ms"]);
        table.row(vec!["direct".into(), "0.84".into()]);
        table.row(vec!["makeself".into()]);
        table.note("note");
        assert_eq!(
            table.render(),
            "### T\n\n| name     |   ms |\n| -------- | ---: |\n| direct   | 0.84 |\n\
             | makeself |      |\n\nnote\n"
        );
    }

    #[test]
    fn unmeasured_rows_fill_every_column() {
        let mut table = Table::new("T", &["name", ">ms", "result"]);
        table.unmeasured("makeself", "not installed");
        assert_eq!(
            table.render(),
            "### T\n\n| name     |  ms | result                      |\n\
             | -------- | --: | --------------------------- |\n\
             | makeself |   - | not measured: not installed |\n"
        );
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
    }
}
