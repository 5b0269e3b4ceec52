//! The benchmark's report: JSON, a Markdown table and a PNG chart.

use std::path::Path;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde::Serialize;
use tokio_postgres::Client;

use super::Measured;
use super::strategy::{Role, Strategy};

/// The machine the numbers come from.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// CPU cores available to this process.
    pub cores: usize,
    /// Total memory, bytes.
    pub memory_bytes: u64,
    /// Operating system.
    pub os: String,
    /// PostgreSQL version string.
    pub server: String,
}

impl Machine {
    /// Reads the machine's details; unknown values stay empty.
    pub async fn detect(client: &Client) -> Self {
        let memory_bytes = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find(|l| l.starts_with("MemTotal:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|kb| kb.parse::<u64>().ok())
            })
            .map_or(0, |kb| kb * 1024);
        let os = std::fs::read_to_string("/etc/os-release")
            .ok()
            .and_then(|r| {
                r.lines().find_map(|l| {
                    l.strip_prefix("PRETTY_NAME=")
                        .map(|v| v.trim_matches('"').to_string())
                })
            })
            .unwrap_or_else(|| std::env::consts::OS.to_string());
        let server = match client.query_one("SELECT version()", &[]).await {
            Ok(row) => row.get(0),
            Err(_) => String::new(),
        };
        Self {
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            memory_bytes,
            os,
            server,
        }
    }

    /// One line for a report: "Machine: 2 cores, 24 GiB, OS; server."
    pub fn summary(&self) -> String {
        format!(
            "Machine: {} cores, {:.0} GiB, {}; {}.",
            self.cores,
            self.memory_bytes as f64 / 1_073_741_824.0,
            self.os,
            self.server
        )
    }
}

/// One strategy's numbers. Each run of it went twice, on fresh copies:
/// alone (its speed with nothing else running: seconds, rows/s, the ratio,
/// WAL) and under rotation load (`loaded_*` and the rotations' latency).
#[derive(Debug, Clone, Serialize)]
pub struct StrategyResult {
    /// The strategy's name (see [`super::strategy::ALL`]).
    pub name: String,
    /// What it is in the comparison.
    pub role: Role,
    /// Rows it deleted alone (a peer may stop at its time cap).
    pub rows_deleted: i64,
    /// Whether it deleted every due row.
    pub complete: bool,
    /// Wall time alone: the median of `runs_seconds`.
    pub seconds: f64,
    /// Wall time alone of each repetition (`--repeat`), in the order they
    /// ran.
    pub runs_seconds: Vec<f64>,
    /// rows_deleted / seconds.
    pub rows_per_s: f64,
    /// rows_per_s relative to the baseline's (single-delete's), both alone.
    pub ratio_to_single_delete: f64,
    /// WAL written while it ran alone.
    pub wal_bytes: i64,
    /// Wall time under rotation load: the median of `loaded_runs_seconds`.
    pub loaded_seconds: f64,
    /// Wall time under rotation load of each repetition.
    pub loaded_runs_seconds: Vec<f64>,
    /// Rows per second under rotation load.
    pub loaded_rows_per_s: f64,
    /// loaded_rows_per_s relative to the baseline's under the same load.
    pub loaded_ratio_to_single_delete: f64,
    /// Rotation latency while it ran, from each call's scheduled start
    /// (the median over the repetitions).
    pub rotate_p50_ms: f64,
    /// 99th percentile of the same (the median over the repetitions).
    pub rotate_p99_ms: f64,
    /// Rotations that failed while it ran, over every repetition.
    pub rotate_failures: usize,
}

/// The run of median wall time among `runs` (at least one), the seconds of
/// every run in order, and the median run's rows per second.
fn median_run(runs: &[Measured]) -> (&Measured, Vec<f64>, f64) {
    let seconds: Vec<f64> = runs.iter().map(|r| r.seconds).collect();
    let median_seconds = median(&seconds);
    let run = runs
        .iter()
        .find(|r| r.seconds == median_seconds)
        .unwrap_or(&runs[0]);
    let rate = if run.seconds > 0.0 {
        run.rows_deleted as f64 / run.seconds
    } else {
        0.0
    };
    (run, seconds, rate)
}

impl StrategyResult {
    /// One strategy's numbers over its repetitions alone (`quiet`) and
    /// under load (`loaded`), at least one each: the median of each measure,
    /// failures summed; rows, completeness and WAL from the quiet run of
    /// median time.
    pub(super) fn new(
        strategy: &dyn Strategy,
        quiet: &[Measured],
        loaded: &[Measured],
        due: i64,
    ) -> Self {
        let (quiet_run, seconds, rows_per_s) = median_run(quiet);
        let (loaded_run, loaded_seconds, loaded_rows_per_s) = median_run(loaded);
        Self {
            name: strategy.name().to_string(),
            role: strategy.role(),
            rows_deleted: quiet_run.rows_deleted,
            complete: quiet_run.rows_deleted >= due,
            seconds: quiet_run.seconds,
            runs_seconds: seconds,
            rows_per_s,
            ratio_to_single_delete: 0.0,
            wal_bytes: quiet_run.wal_bytes,
            loaded_seconds: loaded_run.seconds,
            loaded_runs_seconds: loaded_seconds,
            loaded_rows_per_s,
            loaded_ratio_to_single_delete: 0.0,
            rotate_p50_ms: median(&loaded.iter().map(|r| r.p50_ms).collect::<Vec<_>>()),
            rotate_p99_ms: median(&loaded.iter().map(|r| r.p99_ms).collect::<Vec<_>>()),
            rotate_failures: loaded.iter().map(|r| r.failures).sum(),
        }
    }

    /// "0.84", or "0.84 (0.84, 0.91, 0.80)" when it ran more than once.
    fn seconds_with_runs(&self) -> String {
        let median = format!("{:.2}", self.seconds);
        if self.runs_seconds.len() < 2 {
            return median;
        }
        let runs: Vec<String> = self
            .runs_seconds
            .iter()
            .map(|s| format!("{s:.2}"))
            .collect();
        format!("{median} ({})", runs.join(", "))
    }
}

/// The median of `values` (the lower middle one of an even count, so that
/// it is always one of them); 0 when empty.
fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted
        .get(sorted.len().saturating_sub(1) / 2)
        .copied()
        .unwrap_or(0.0)
}

/// The strategies' numbers on one heap layout.
#[derive(Debug, Clone, Serialize)]
pub struct LayoutResult {
    /// The layout.
    pub layout: super::Layout,
    /// Due rows in its table (every strategy deletes these).
    pub due: i64,
    /// In the order they ran: every strategy on the first layout measured,
    /// the baseline and token-janitor on the others.
    pub strategies: Vec<StrategyResult>,
}

impl LayoutResult {
    /// The results on `layout`, each one's ratios set against the
    /// baseline's rates, alone and under load (0 without a baseline or when
    /// it deleted nothing).
    pub(super) fn new(
        layout: super::Layout,
        due: i64,
        mut strategies: Vec<StrategyResult>,
    ) -> Self {
        let ratio = |rate: f64, baseline: f64| if baseline > 0.0 { rate / baseline } else { 0.0 };
        let baseline = strategies
            .iter()
            .find(|s| s.role == Role::Baseline)
            .map_or((0.0, 0.0), |s| (s.rows_per_s, s.loaded_rows_per_s));
        for s in &mut strategies {
            s.ratio_to_single_delete = ratio(s.rows_per_s, baseline.0);
            s.loaded_ratio_to_single_delete = ratio(s.loaded_rows_per_s, baseline.1);
        }
        Self {
            layout,
            due,
            strategies,
        }
    }

    /// The baseline's numbers on this layout, if it ran.
    pub fn baseline(&self) -> Option<&StrategyResult> {
        self.with_role(Role::Baseline)
    }

    /// token-janitor's numbers on this layout, if it ran.
    pub fn token_janitor(&self) -> Option<&StrategyResult> {
        self.with_role(Role::Subject)
    }

    fn with_role(&self, role: Role) -> Option<&StrategyResult> {
        self.strategies.iter().find(|s| s.role == role)
    }
}

/// Purge time for a fixed number of due rows as the rest of the table grows.
#[derive(Debug, Clone, Serialize)]
pub struct Scaling {
    /// Where the live rows sit relative to the due rows.
    pub layout: super::IdleRows,
    /// Due rows in each table.
    pub due: i64,
    /// Other (live) rows in each table.
    pub live_rows: Vec<i64>,
    /// Seconds `CALL auth.run_token_cleanup()` took on each.
    pub seconds: Vec<f64>,
    /// Largest table's time over the smallest's.
    pub ratio: f64,
}

/// Everything one bench run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Token rows seeded for each layout.
    pub rows: i64,
    /// Rotations per second during every phase.
    pub rotate_rate: f64,
    /// auth.cleanup_policy.batch_size of the token-janitor runs.
    pub batch_size: i32,
    /// auth.cleanup_policy.pace of the token-janitor runs.
    pub pace: bool,
    /// Runs of single-delete and token-janitor per layout (`--repeat`), in
    /// alternating order; their numbers are the medians.
    pub repeat: usize,
    /// Rotation latency with no purge running.
    pub idle_rotate_p50_ms: f64,
    /// 99th percentile of the same.
    pub idle_rotate_p99_ms: f64,
    /// Rotations that failed with no purge running.
    pub idle_rotate_failures: usize,
    /// Where it ran.
    pub machine: Machine,
    /// One entry per layout measured, in the order measured.
    pub layouts: Vec<LayoutResult>,
    /// The scaling measurements, one per layout, when asked for.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub scaling: Vec<Scaling>,
}

impl Report {
    /// Markdown tables: token-janitor against single-delete on every
    /// layout, then every strategy on the first, with the idle baseline and
    /// scaling.
    pub fn markdown(&self) -> String {
        let mut out = format!(
            "{} token rows per layout; token-janitor batch_size {}, pace {}. Every purge ran twice, each time on a fresh copy: alone (seconds, rows/s and ratios: its speed with nothing else running) and under rotate_token at {}/s (seconds under load, and the rotations' latency against an idle p50 of {:.2} ms and p99 of {:.2} ms).{}\n\n",
            self.rows,
            self.batch_size,
            if self.pace { "on" } else { "off" },
            self.rotate_rate,
            self.idle_rotate_p50_ms,
            self.idle_rotate_p99_ms,
            if self.repeat > 1 {
                format!(
                    " single-delete and token-janitor ran {} times on each layout, in alternating order: medians, each run's seconds alone in parentheses.",
                    self.repeat
                )
            } else {
                String::new()
            }
        );
        out.push_str(
            "| layout | due rows | single-delete s | token-janitor s | token-janitor vs single-delete | under load: single-delete s / token-janitor s (ratio) | rotate p99 ms single-delete / token-janitor | token-janitor p99 vs idle | failed rotations |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        );
        for layout in &self.layouts {
            let (Some(single), Some(janitor)) = (layout.baseline(), layout.token_janitor()) else {
                continue;
            };
            out.push_str(&format!(
                "| {} | {} | {} | {} | {:.2}x | {:.2} / {:.2} ({:.2}x) | {:.2} / {:.2} | {:.2}x | {} |\n",
                layout.layout.name(),
                layout.due,
                single.seconds_with_runs(),
                janitor.seconds_with_runs(),
                janitor.ratio_to_single_delete,
                single.loaded_seconds,
                janitor.loaded_seconds,
                janitor.loaded_ratio_to_single_delete,
                single.rotate_p99_ms,
                janitor.rotate_p99_ms,
                self.vs_idle(janitor.rotate_p99_ms),
                single.rotate_failures + janitor.rotate_failures
            ));
        }
        if let Some(first) = self.layouts.first() {
            out.push_str(&format!(
                "\nEvery strategy on layout {} ({} due rows):\n\n",
                first.layout.name(),
                first.due
            ));
            out.push_str(
                "| strategy | rows deleted | seconds | rows/s | vs single-delete | WAL MiB | under load s (vs single-delete) | rotate p50 ms | rotate p99 ms | p99 vs idle | failed rotations |\n\
                 |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
            );
            for s in &first.strategies {
                out.push_str(&format!(
                    "| {}{} | {} | {:.2} | {:.0} | {:.2}x | {:.1} | {:.2} ({:.2}x) | {:.2} | {:.2} | {:.2}x | {} |\n",
                    s.name,
                    if s.complete { "" } else { " (capped)" },
                    s.rows_deleted,
                    s.seconds,
                    s.rows_per_s,
                    s.ratio_to_single_delete,
                    s.wal_bytes as f64 / 1_048_576.0,
                    s.loaded_seconds,
                    s.loaded_ratio_to_single_delete,
                    s.rotate_p50_ms,
                    s.rotate_p99_ms,
                    self.vs_idle(s.rotate_p99_ms),
                    s.rotate_failures
                ));
            }
        }
        for scaling in &self.scaling {
            out.push_str(&format!(
                "\nScaling ({:?} live rows): {} due rows purged in {} s with {} live rows; ratio {:.2}.\n",
                scaling.layout,
                scaling.due,
                scaling.seconds.iter().map(|s| format!("{s:.2}")).collect::<Vec<_>>().join(" / "),
                scaling.live_rows.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(" / "),
                scaling.ratio
            ));
        }
        out.push_str(&format!("\n{}\n", self.machine.summary()));
        out
    }

    /// `p99_ms` over the idle baseline's p99; 0 without a baseline.
    fn vs_idle(&self, p99_ms: f64) -> f64 {
        if self.idle_rotate_p99_ms > 0.0 {
            p99_ms / self.idle_rotate_p99_ms
        } else {
            0.0
        }
    }

    /// Draws three panels into a PNG: rows/s per strategy on the first
    /// layout (log scale: peers run 100x slower), rotation p99 idle and
    /// during each strategy, and token-janitor's speed over single-delete's
    /// on every layout; each bar carries its value.
    ///
    /// # Errors
    /// When no TrueType font can be read or the file cannot be written.
    pub fn png(&self, path: &Path) -> Result<(), String> {
        png(path, |path| self.draw(path))
    }

    fn draw(&self, path: &Path) -> Result<(), Box<dyn std::error::Error>> {
        let root = BitMapBackend::new(path, (1800, 520)).into_drawing_area();
        root.fill(&WHITE)?;
        let panels = root.split_evenly((1, 3));
        let strategies = self
            .layouts
            .first()
            .map_or(&[][..], |l| l.strategies.as_slice());
        let names: Vec<&str> = strategies.iter().map(|s| s.name.as_str()).collect();
        let rates: Vec<f64> = strategies.iter().map(|s| s.rows_per_s).collect();
        bars(
            &panels[0],
            "rows deleted per second, alone (log scale)",
            &names,
            &rates,
            &Scale::Log,
        )?;
        let mut latency_names = vec!["idle"];
        latency_names.extend(&names);
        let mut latencies = vec![self.idle_rotate_p99_ms];
        latencies.extend(strategies.iter().map(|s| s.rotate_p99_ms));
        bars(
            &panels[1],
            "rotate_token p99 ms during each purge (line: 2x idle)",
            &latency_names,
            &latencies,
            &Scale::Linear {
                line: Some(2.0 * self.idle_rotate_p99_ms),
            },
        )?;
        let layout_names: Vec<&str> = self.layouts.iter().map(|l| l.layout.name()).collect();
        let ratios: Vec<f64> = self
            .layouts
            .iter()
            .map(|l| l.token_janitor().map_or(0.0, |t| t.ratio_to_single_delete))
            .collect();
        bars(
            &panels[2],
            "token-janitor / single DELETE by layout, alone (line: 0.6x)",
            &layout_names,
            &ratios,
            &Scale::Linear { line: Some(0.6) },
        )?;
        root.present()?;
        Ok(())
    }
}

/// Registers the charts' font as "sans-serif", then has `draw` draw the
/// chart into the PNG at `path`.
///
/// # Errors
/// When no TrueType font can be read or `draw` fails.
pub(super) fn png(
    path: &Path,
    draw: impl FnOnce(&Path) -> Result<(), Box<dyn std::error::Error>>,
) -> Result<(), String> {
    const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
    let font = std::fs::read(FONT).map_err(|err| {
        format!("the chart needs the font {FONT} ({err}): apt-get install fonts-dejavu-core")
    })?;
    plotters::style::register_font(
        "sans-serif",
        FontStyle::Normal,
        Box::leak(font.into_boxed_slice()),
    )
    .map_err(|_| format!("{FONT} is not a usable font"))?;
    draw(path).map_err(|err| format!("cannot draw {}: {err}", path.display()))
}

/// A bar panel's value axis.
enum Scale {
    /// From zero, with an optional red reference line.
    Linear { line: Option<f64> },
    /// Powers of ten, for values that differ by orders of magnitude.
    Log,
}

/// A bar's label: three significant digits, thousands without decimals.
fn label(value: f64) -> String {
    if value >= 1000.0 {
        format!("{value:.0}")
    } else if value >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

fn bars(
    area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    title: &str,
    names: &[&str],
    values: &[f64],
    scale: &Scale,
) -> Result<(), Box<dyn std::error::Error>> {
    // A log axis is drawn as log10 of each value, labelled with the powers.
    let (heights, line, bottom, top): (Vec<f64>, Option<f64>, f64, f64) = match scale {
        Scale::Linear { line } => {
            let top = values
                .iter()
                .copied()
                .chain(*line)
                .fold(0.0, f64::max)
                .max(1e-9)
                * 1.15;
            (values.to_vec(), *line, 0.0, top)
        }
        Scale::Log => {
            let logs: Vec<f64> = values.iter().map(|v| v.max(1.0).log10()).collect();
            let top = logs.iter().copied().fold(0.0, f64::max).ceil() + 0.3;
            let bottom = logs.iter().copied().fold(top, f64::min).floor().max(0.0);
            (logs, None, bottom, top)
        }
    };
    let log = matches!(scale, Scale::Log);
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(80)
        .build_cartesian_2d(0.0..names.len() as f64, bottom..top)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(names.len() * 2 + 1)
        .x_label_formatter(&|x| {
            let slot = *x - x.floor();
            if (slot - 0.5).abs() < 0.01 {
                names
                    .get(x.floor() as usize)
                    .map_or(String::new(), |n| n.to_string())
            } else {
                String::new()
            }
        })
        .y_labels(if log { (top - bottom) as usize + 1 } else { 10 })
        .y_label_formatter(&|y| {
            if log {
                label(10f64.powf(*y))
            } else {
                label(*y)
            }
        })
        .label_style(("sans-serif", 14))
        .draw()?;
    chart.draw_series(heights.iter().enumerate().map(|(i, h)| {
        Rectangle::new(
            [(i as f64 + 0.15, bottom), (i as f64 + 0.85, *h)],
            BLUE.mix(0.7).filled(),
        )
    }))?;
    let on_top =
        TextStyle::from(("sans-serif", 15).into_font()).pos(Pos::new(HPos::Center, VPos::Bottom));
    chart.draw_series(
        values
            .iter()
            .zip(&heights)
            .enumerate()
            .map(|(i, (v, h))| Text::new(label(*v), (i as f64 + 0.5, *h), on_top.clone())),
    )?;
    if let Some(y) = line {
        chart.draw_series(LineSeries::new(
            [(0.0, y), (names.len() as f64, y)],
            RED.stroke_width(2),
        ))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(role: Role, rows_per_s: f64, loaded_rows_per_s: f64) -> StrategyResult {
        StrategyResult {
            name: format!("{role:?}"),
            role,
            rows_deleted: 0,
            complete: true,
            seconds: 0.0,
            runs_seconds: vec![0.0],
            rows_per_s,
            ratio_to_single_delete: 0.0,
            wal_bytes: 0,
            loaded_seconds: 0.0,
            loaded_runs_seconds: vec![0.0],
            loaded_rows_per_s,
            loaded_ratio_to_single_delete: 0.0,
            rotate_p50_ms: 0.0,
            rotate_p99_ms: 0.0,
            rotate_failures: 0,
        }
    }

    fn measured(seconds: f64, p99_ms: f64, failures: usize) -> Measured {
        Measured {
            rows_deleted: (seconds * 1000.0) as i64,
            seconds,
            wal_bytes: 0,
            p50_ms: 0.0,
            p99_ms,
            failures,
        }
    }

    /// Repetitions are summed up by their medians, each measure on its own:
    /// speed from the runs alone, latency and failures (every run's) from
    /// the runs under load; rows come from the run alone of median time.
    #[test]
    fn repetitions_report_medians_and_every_failure() {
        let quiet = [
            measured(2.0, 0.0, 0),
            measured(1.0, 0.0, 0),
            measured(3.0, 0.0, 0),
        ];
        let loaded = [
            measured(4.0, 9.0, 0),
            measured(5.0, 30.0, 1),
            measured(8.0, 5.0, 2),
        ];
        let result =
            StrategyResult::new(&super::super::strategy::SingleDelete, &quiet, &loaded, 2000);
        assert_eq!(result.seconds, 2.0);
        assert_eq!(result.runs_seconds, [2.0, 1.0, 3.0]);
        assert_eq!(result.rows_deleted, 2000);
        assert_eq!(result.rows_per_s, 1000.0);
        assert!(result.complete);
        assert_eq!(result.loaded_seconds, 5.0);
        assert_eq!(result.loaded_runs_seconds, [4.0, 5.0, 8.0]);
        assert_eq!(result.loaded_rows_per_s, 1000.0);
        assert_eq!(result.rotate_p99_ms, 9.0);
        assert_eq!(result.rotate_failures, 3);
        assert_eq!(result.seconds_with_runs(), "2.00 (2.00, 1.00, 3.00)");
        assert_eq!(
            median(&[4.0, 1.0]),
            1.0,
            "the lower middle of an even count"
        );
        assert_eq!(median(&[]), 0.0);
    }

    /// The baseline is found by its role wherever it ran in the order.
    #[test]
    fn ratios_divide_by_the_baseline_wherever_it_is() {
        let layout = LayoutResult::new(
            super::super::Layout::Time,
            0,
            vec![
                result(Role::Peer, 10.0, 5.0),
                result(Role::Subject, 60.0, 20.0),
                result(Role::Baseline, 100.0, 50.0),
            ],
        );
        let ratios: Vec<(f64, f64)> = layout
            .strategies
            .iter()
            .map(|s| (s.ratio_to_single_delete, s.loaded_ratio_to_single_delete))
            .collect();
        assert_eq!(ratios, [(0.1, 0.1), (0.6, 0.4), (1.0, 1.0)]);
        assert_eq!(layout.baseline().map(|s| s.role), Some(Role::Baseline));
        assert_eq!(layout.token_janitor().map(|s| s.role), Some(Role::Subject));
    }
}
