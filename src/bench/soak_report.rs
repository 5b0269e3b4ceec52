//! The soak's report: JSON (under the key `soak`), a Markdown summary and a
//! PNG of size, rows per live session and rotate p99 over time.

use std::collections::BTreeMap;
use std::path::Path;

use plotters::prelude::*;
use serde::Serialize;

use super::Machine;

/// Token rows per live session that issue 25 asks the soak to stay under
/// with the default policy.
const ROWS_PER_LIVE_SESSION_TARGET: f64 = 1.2;

/// The soak's compressed policy, in seconds. R is the refresh interval.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct SoakPolicy {
    /// R: how often each session refreshes (sessions / rotate rate);
    /// production: 15 minutes.
    pub refresh_s: f64,
    /// Production's 15 minutes over R: how much faster than in production
    /// the refresh-scale periods pass.
    pub compression: f64,
    /// How often the cleanup runs: R/3 (production: every 5 minutes).
    pub schedule_s: f64,
    /// auth.cleanup_policy.rotated_retention: 4R (production: 1 hour).
    pub rotated_retention_s: f64,
    /// expired_retention: 12R (production: 1 day, 96R).
    pub expired_retention_s: f64,
    /// revoked_retention: 12R (production: 7 days, 672R).
    pub revoked_retention_s: f64,
    /// The lifetime of an abandoned login's only token: 4R.
    pub abandoned_ttl_s: f64,
    /// A device's mean time between logouts: 40R, so that logged-out rows
    /// per live session (revoked_retention / session_life = 0.3) are what
    /// production's 7-day retention gives sessions that last about 3 weeks.
    pub session_life_s: f64,
}

/// One sample of the soak.
#[derive(Debug, Clone, Serialize)]
pub struct SoakSample {
    /// Seconds since the rotations started.
    pub elapsed_s: f64,
    /// auth.refresh_tokens and auth.sessions on disk (pg_table_size: heap,
    /// free space and visibility maps, TOAST).
    pub heap_bytes: i64,
    /// Their indexes on disk (pg_indexes_size).
    pub index_bytes: i64,
    /// Rows of auth.refresh_tokens.
    pub token_rows: i64,
    /// Sessions neither revoked nor expired.
    pub live_sessions: i64,
    /// rotate_token's p99 over the window since the previous sample, from
    /// each call's scheduled start.
    pub rotate_p99_ms: f64,
    /// Autovacuum runs on the two tables so far (pg_stat_user_tables).
    pub autovacuums: i64,
}

/// One table or index, at the end of the warm-up and at the end.
#[derive(Debug, Clone, Serialize)]
pub struct Relation {
    /// Its name (schema auth).
    pub name: String,
    /// "table" or "index".
    pub kind: String,
    /// Bytes at the end of the warm-up.
    pub warm_bytes: i64,
    /// Bytes at the end.
    pub end_bytes: i64,
    /// end_bytes / warm_bytes.
    pub growth: f64,
}

impl Relation {
    pub(super) fn new(name: String, kind: String, warm_bytes: i64, end_bytes: i64) -> Self {
        Self {
            name,
            kind,
            warm_bytes,
            end_bytes,
            growth: if warm_bytes > 0 {
                end_bytes as f64 / warm_bytes as f64
            } else {
                0.0
            },
        }
    }
}

/// The token traffic of the soak.
#[derive(Debug, Clone, Serialize)]
pub struct SoakTraffic {
    /// rotate_token calls.
    pub rotations: usize,
    /// Calls that errored or did not return 'rotated'.
    pub rotate_failures: usize,
    /// issue_token calls: the first logins, a new login after each logout,
    /// and the abandoned logins.
    pub logins: usize,
    /// revoke_session calls.
    pub logouts: usize,
    /// Logins with a short-lived token never refreshed (they expire).
    pub abandoned: usize,
}

/// What the cleanup runs did (auth.cleanup_runs).
#[derive(Debug, Clone, Serialize)]
pub struct SoakCleanup {
    /// Runs recorded.
    pub runs: i64,
    /// Runs that deleted everything due.
    pub ok: i64,
    /// Runs stopped by max_runtime or a row lock.
    pub partial: i64,
    /// Runs that found another running.
    pub skipped: i64,
    /// Runs that failed.
    pub failed: i64,
    /// Token rows deleted, every kind.
    pub tokens_deleted: i64,
    /// Sessions deleted.
    pub sessions_deleted: i64,
    /// The longest run, seconds.
    pub longest_run_s: f64,
}

/// Everything one soak measured.
#[derive(Debug, Clone, Serialize)]
pub struct SoakResult {
    /// Bytes of the tables and indexes at the end over those at the end of
    /// the warm-up (target: at most 1.10).
    pub size_growth: f64,
    /// Token rows per live session at the end (target: at most 6).
    pub rows_per_live_session: f64,
    /// rotate_token's p99 in the last window over the first window after
    /// the warm-up, each a sixth of the run (target: at most 1.2).
    pub rotate_p99_growth: f64,
    /// The length of each of the two windows, seconds.
    pub rotate_p99_window_s: f64,
    /// rotate_token's p99 in the first window after the warm-up, ms.
    pub rotate_p99_first_ms: f64,
    /// rotate_token's p99 in the last window, ms.
    pub rotate_p99_last_ms: f64,
    /// The run's length, warm-up included.
    pub minutes: f64,
    /// Devices logged in throughout.
    pub sessions: usize,
    /// rotate_token calls per second.
    pub rotate_rate: f64,
    /// auth.cleanup_policy.batch_size.
    pub batch_size: i32,
    /// auth.cleanup_policy.pace.
    pub pace: bool,
    /// The server's autovacuum_naptime, seconds: how often autovacuum
    /// looks at the tables at most (not compressed with the policy).
    pub autovacuum_naptime_s: f64,
    /// Seconds of warm-up: the first 30% of the run.
    pub warmup_s: f64,
    /// The compressed policy.
    pub policy: SoakPolicy,
    /// The token traffic.
    pub traffic: SoakTraffic,
    /// The cleanup runs.
    pub cleanup: SoakCleanup,
    /// Token rows by state (live, expired, revoked, rotated) and sessions,
    /// at the end.
    pub rows_at_end: BTreeMap<String, i64>,
    /// The tables and their indexes, at the end of the warm-up and at the end.
    pub relations: Vec<Relation>,
    /// The samples, evenly spaced over the run.
    pub samples: Vec<SoakSample>,
}

/// The soak's report as written to JSON.
#[derive(Debug, Clone, Serialize)]
pub struct SoakReport {
    /// The soak.
    pub soak: SoakResult,
    /// Where it ran.
    pub machine: Machine,
}

fn mb(bytes: i64) -> f64 {
    bytes as f64 / 1_048_576.0
}

impl SoakReport {
    /// The three ratios against their targets, each relation's growth, and
    /// what the traffic and the cleanup did.
    pub fn markdown(&self) -> String {
        let s = &self.soak;
        let p = &s.policy;
        let mut out = format!(
            "Soak: {:.1} minutes, {} sessions each refreshing every {:.2} s (rotate_token at {}/s; \
             {:.0}x production's pace): rotated rows kept {:.1} s, expired and revoked ones {:.1} s, \
             CALL auth.run_token_cleanup() every {:.2} s (batch_size {}, pace {}), autovacuum_naptime \
             {} s; warm-up {:.0} s.\n\n",
            s.minutes,
            s.sessions,
            p.refresh_s,
            s.rotate_rate,
            p.compression,
            p.rotated_retention_s,
            p.expired_retention_s,
            p.schedule_s,
            s.batch_size,
            if s.pace { "on" } else { "off" },
            s.autovacuum_naptime_s,
            s.warmup_s
        );
        out.push_str(&format!(
            "| measure | value | target |\n|---|---:|---:|\n\
             | size_growth (tables + indexes, end / end of warm-up) | {:.3} | ≤ 1.10 |\n\
             | rows_per_live_session (end) | {:.2} | ≤ {ROWS_PER_LIVE_SESSION_TARGET} |\n\
             | rotate_p99_growth (last window / first after warm-up, {:.0} s each: {:.1} / {:.1} ms) | {:.2} | ≤ 1.2 |\n\n",
            s.size_growth,
            s.rows_per_live_session,
            s.rotate_p99_window_s,
            s.rotate_p99_last_ms,
            s.rotate_p99_first_ms,
            s.rotate_p99_growth
        ));
        out.push_str("| relation | end of warm-up MB | end MB | growth |\n|---|---:|---:|---:|\n");
        for r in &s.relations {
            out.push_str(&format!(
                "| {} ({}) | {:.2} | {:.2} | {:.3} |\n",
                r.name,
                r.kind,
                mb(r.warm_bytes),
                mb(r.end_bytes),
                r.growth
            ));
        }
        let rows: Vec<String> = s
            .rows_at_end
            .iter()
            .map(|(state, rows)| format!("{state} {rows}"))
            .collect();
        let last = s.samples.last();
        out.push_str(&format!(
            "\nAt the end: {}; {} live sessions. Traffic: {} rotations ({} failed), {} logins, \
             {} logouts, {} abandoned logins. Cleanup: {} runs ({} ok, {} partial, {} skipped, \
             {} failed), {} token rows and {} sessions deleted, longest run {:.2} s. \
             Autovacuum ran {} times on the two tables.\n\n{}\n",
            rows.join(", "),
            last.map_or(0, |l| l.live_sessions),
            s.traffic.rotations,
            s.traffic.rotate_failures,
            s.traffic.logins,
            s.traffic.logouts,
            s.traffic.abandoned,
            s.cleanup.runs,
            s.cleanup.ok,
            s.cleanup.partial,
            s.cleanup.skipped,
            s.cleanup.failed,
            s.cleanup.tokens_deleted,
            s.cleanup.sessions_deleted,
            s.cleanup.longest_run_s,
            last.map_or(0, |l| l.autovacuums),
            self.machine.summary()
        ));
        out
    }

    /// Draws three panels over time into a PNG: the tables' and indexes'
    /// size, token rows per live session, and rotate_token's p99 per
    /// window; a grey line marks the end of the warm-up.
    ///
    /// # Errors
    /// When no TrueType font can be read or the file cannot be written.
    pub fn png(&self, path: &Path) -> Result<(), String> {
        super::report::png(path, |path| self.draw(path))
    }

    fn draw(&self, path: &Path) -> Result<(), Box<dyn std::error::Error>> {
        let root = BitMapBackend::new(path, (1800, 520)).into_drawing_area();
        root.fill(&WHITE)?;
        let panels = root.split_evenly((1, 3));
        let samples = &self.soak.samples;
        let x: Vec<f64> = samples.iter().map(|s| s.elapsed_s).collect();
        let of = |f: fn(&SoakSample) -> f64| samples.iter().map(f).collect::<Vec<f64>>();
        let warmup = self.soak.warmup_s;
        lines(
            &panels[0],
            "tables and indexes on disk, MB",
            &x,
            &[
                ("tables", of(|s| mb(s.heap_bytes)), BLUE),
                ("indexes", of(|s| mb(s.index_bytes)), RGBColor(230, 120, 0)),
                ("total", of(|s| mb(s.heap_bytes + s.index_bytes)), BLACK),
            ],
            warmup,
            None,
        )?;
        lines(
            &panels[1],
            &format!(
                "token rows per live session (line: {ROWS_PER_LIVE_SESSION_TARGET}, the target)"
            ),
            &x,
            &[(
                "rows / live session",
                of(|s| {
                    if s.live_sessions > 0 {
                        s.token_rows as f64 / s.live_sessions as f64
                    } else {
                        0.0
                    }
                }),
                BLUE,
            )],
            warmup,
            Some(ROWS_PER_LIVE_SESSION_TARGET),
        )?;
        lines(
            &panels[2],
            "rotate_token p99 ms per window",
            &x,
            &[("p99", of(|s| s.rotate_p99_ms), BLUE)],
            warmup,
            None,
        )?;
        root.present()?;
        Ok(())
    }
}

/// A panel of series over elapsed seconds, from zero, with the warm-up's
/// end marked and an optional red reference line.
fn lines(
    area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    title: &str,
    x: &[f64],
    series: &[(&str, Vec<f64>, RGBColor)],
    warmup_s: f64,
    line: Option<f64>,
) -> Result<(), Box<dyn std::error::Error>> {
    let right = x.iter().copied().fold(1.0, f64::max);
    let top = series
        .iter()
        .flat_map(|s| s.1.iter().copied())
        .chain(line)
        .fold(0.0, f64::max)
        .max(1e-9)
        * 1.15;
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..right, 0.0..top)?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .label_style(("sans-serif", 14))
        .draw()?;
    let grey = BLACK.mix(0.4);
    chart.draw_series(LineSeries::new(
        [(warmup_s, 0.0), (warmup_s, top)],
        grey.stroke_width(2),
    ))?;
    chart.draw_series(std::iter::once(Text::new(
        "end of warm-up",
        (warmup_s + right * 0.01, top * 0.97),
        ("sans-serif", 14).into_font().color(&grey),
    )))?;
    if let Some(y) = line {
        chart.draw_series(LineSeries::new([(0.0, y), (right, y)], RED.stroke_width(2)))?;
    }
    for (name, values, color) in series {
        let color = *color;
        chart
            .draw_series(LineSeries::new(
                x.iter().copied().zip(values.iter().copied()),
                color.stroke_width(2),
            ))?
            .label(*name)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .label_font(("sans-serif", 14))
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}
