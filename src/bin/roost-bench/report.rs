//! Figures and how they are printed: each beside the ceiling it is measured against.

use std::time::Duration;

use serde::Serialize;

/// Which direction is better for a figure: it decides how its ratio to the ceiling is taken, so
/// that a ratio of 1.0 always means "as good as the ceiling" and less means worse.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Better {
    Higher,
    Lower,
}

/// What a figure is measured against, measured in the same run.
#[derive(Clone, Debug, Serialize)]
pub struct Ceiling {
    pub name: String,
    pub value: f64,
}

/// One measured figure.
#[derive(Clone, Debug, Serialize)]
pub struct Figure {
    pub scenario: &'static str,
    pub name: String,
    pub value: f64,
    pub unit: &'static str,
    pub better: Better,
    pub ceiling: Option<Ceiling>,
    /// `value / ceiling` for rates, `ceiling / value` for costs: 1.0 is the ceiling.
    pub ratio: Option<f64>,
    /// Why the figure could not be measured, when it could not (`value` is then NaN).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
}

/// A series over time (the federation backlog).
#[derive(Clone, Debug, Serialize)]
pub struct Series {
    pub scenario: &'static str,
    pub name: String,
    pub unit: &'static str,
    /// (seconds since the start, value)
    pub points: Vec<(f64, f64)>,
}

/// Everything a run measured, in the order measured.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub figures: Vec<Figure>,
    pub series: Vec<Series>,
}

impl Figure {
    /// `value`, measured for `scenario`/`name`, with no ceiling.
    pub fn new(
        scenario: &'static str,
        name: impl Into<String>,
        value: f64,
        unit: &'static str,
        better: Better,
    ) -> Self {
        Self {
            scenario,
            name: name.into(),
            value,
            unit,
            better,
            ceiling: None,
            ratio: None,
            failure: None,
        }
    }

    /// A time in milliseconds (less is better).
    pub fn ms(scenario: &'static str, name: impl Into<String>, ms: f64) -> Self {
        Self::new(scenario, name, ms, "ms", Better::Lower)
    }

    /// The figure beside `ceiling` (named `name`), measured in the same run.
    pub fn against(mut self, name: impl Into<String>, ceiling: f64) -> Self {
        self.ratio = Some(self.ratio_to(ceiling));
        self.ceiling = Some(Ceiling {
            name: name.into(),
            value: ceiling,
        });
        self
    }

    /// `value / ceiling` for rates, `ceiling / value` for costs.
    fn ratio_to(&self, ceiling: f64) -> f64 {
        match self.better {
            Better::Higher => self.value / ceiling,
            Better::Lower => ceiling / self.value,
        }
    }
}

impl Report {
    /// Records `figure`, and prints it.
    pub fn record(&mut self, figure: Figure) {
        print_figure(&figure);
        self.figures.push(figure);
    }

    /// Records that `scenario`/`name` could not be measured, and why.
    pub fn failed(&mut self, scenario: &'static str, name: impl Into<String>, why: String) {
        self.record(Figure {
            failure: Some(why),
            ..Figure::new(scenario, name, f64::NAN, "", Better::Higher)
        });
    }

    pub fn series(&mut self, series: Series) {
        self.series.push(series);
    }

    /// The median of several runs' reports, figure by figure (figures are matched by scenario and
    /// name; a figure missing from a run is left out of that figure's median).
    pub fn median_of(runs: Vec<Report>) -> Report {
        let mut runs = runs.into_iter();
        let Some(mut merged) = runs.next() else {
            return Report::default();
        };
        let rest: Vec<Report> = runs.collect();
        for figure in &mut merged.figures {
            let same =
                |other: &&Figure| other.scenario == figure.scenario && other.name == figure.name;
            let others: Vec<&Figure> = rest
                .iter()
                .filter_map(|r| r.figures.iter().find(same))
                .collect();
            let mut values: Vec<f64> = std::iter::once(figure.value)
                .chain(others.iter().map(|f| f.value))
                .filter(|v| !v.is_nan())
                .collect();
            let mut ceilings: Vec<f64> = figure
                .ceiling
                .iter()
                .map(|c| c.value)
                .chain(
                    others
                        .iter()
                        .filter_map(|f| f.ceiling.as_ref().map(|c| c.value)),
                )
                .collect();
            if let Some(value) = median(&mut values) {
                figure.value = value;
                figure.failure = None;
            }
            if let (Some(ceiling), Some(value)) = (&mut figure.ceiling, median(&mut ceilings)) {
                ceiling.value = value;
                figure.ratio = Some(figure.ratio_to(value));
            }
        }
        merged
    }

    /// Prints the whole report as a table (after `--runs` merged several).
    pub fn print_table(&self) {
        for figure in &self.figures {
            print_figure(figure);
        }
    }
}

fn median(values: &mut [f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    Some(values[values.len() / 2])
}

fn print_figure(figure: &Figure) {
    if !crate::quiet() {
        eprintln!("{}", format_figure(figure));
    }
}

/// One line: `scenario  name  value unit  [vs ceiling: value = ratio]`.
pub fn format_figure(figure: &Figure) -> String {
    if let Some(why) = &figure.failure {
        return format!("{:<12} {:<58} FAILED: {why}", figure.scenario, figure.name);
    }
    let mut line = format!(
        "{:<12} {:<58} {:>12} {}",
        figure.scenario,
        figure.name,
        format_value(figure.value),
        figure.unit
    );
    if let (Some(ceiling), Some(ratio)) = (&figure.ceiling, figure.ratio) {
        line.push_str(&format!(
            "   vs {} {} = {ratio:.2}",
            ceiling.name,
            format_value(ceiling.value)
        ));
    }
    line
}

fn format_value(value: f64) -> String {
    if value.abs() >= 100.0 || value == 0.0 {
        format!("{value:.0}")
    } else if value.abs() >= 1.0 {
        format!("{value:.2}")
    } else {
        format!("{value:.4}")
    }
}

/// Percentile `p` (0–100) of sorted `samples`, in milliseconds.
pub fn percentile_ms(sorted: &[Duration], p: usize) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = (sorted.len() * p / 100).min(sorted.len() - 1);
    sorted[index].as_secs_f64() * 1000.0
}
