//! `bench`: the purge against the cleanup shapes of other auth servers, side
//! by side on identical copies of one seeded table, each alone and under
//! concurrent token rotations. docs/performance.md has the
//! results.

mod load;
mod report;
mod seed;
mod soak;
mod soak_report;
pub mod strategy;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_postgres::Client;

pub use report::{LayoutResult, Machine, Report, Scaling, StrategyResult};
pub use seed::IdleRows;
pub use soak::{SoakOptions, run_soak};
use strategy::{Role, Strategy};

use crate::db::DatabaseUrl;
use anyhow::Result;

use crate::error::db;
use crate::migrate::migrate;

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Token rows in the seeded table. Default: 1,000,000.
    pub rows: i64,
    /// Share of the rows that are due (rotated over an hour ago), at most 0.9
    /// with ten tokens per family. Default: 0.9.
    pub due_share: f64,
    /// Concurrent auth.rotate_token calls per second. Default: 300.
    pub rotate_rate: f64,
    /// How long the idle baseline runs. Default: 10 s.
    pub idle_seconds: f64,
    /// Peer shapes stop after this long and report the rate they reached.
    /// Default: 60 s.
    pub peer_cap: Duration,
    /// Also measure scaling: this many due rows with the live part of the
    /// table at 1x and 5x this size. Default: none.
    pub scaling: Option<(i64, i64)>,
    /// auth.cleanup_policy.batch_size for the token-janitor runs. Default:
    /// the policy's default.
    pub batch_size: Option<i32>,
    /// The heap layouts to measure, in order; every strategy runs on the
    /// first, single-delete and token-janitor on each. Default: time.
    pub layouts: Vec<Layout>,
    /// auth.cleanup_policy.pace for the token-janitor runs. Default: the
    /// policy's (on).
    pub pace: Option<bool>,
    /// Runs of every strategy but the peers on each layout, each on a fresh
    /// copy, the order reversed every other round so that neither side
    /// always goes first; the report gives the medians. Default: 1.
    pub repeat: usize,
}

/// A heap layout of the seeded table (DESIGN.md §10).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// Rows in the order they were issued, as a table fills.
    Time,
    /// A session's rows together (heap order = primary key order, as after
    /// a restore or a CLUSTER), sessions in login order.
    Session,
    /// Half the rows are single live tokens issued over the same week as
    /// the due rows, between them in the heap (sessions idle for days).
    Interleaved,
    /// As `session`, with every due row of a generation revoked at one
    /// instant: a mass revocation (one UPDATE over every session).
    Ties,
}

impl Layout {
    /// Every layout, in the order `--layout all` measures them.
    pub const ALL: [Layout; 4] = [
        Layout::Time,
        Layout::Session,
        Layout::Interleaved,
        Layout::Ties,
    ];

    /// The name `--layout` takes and the report shows.
    pub fn name(self) -> &'static str {
        match self {
            Layout::Time => "time",
            Layout::Session => "session",
            Layout::Interleaved => "interleaved",
            Layout::Ties => "ties",
        }
    }

    /// The layout called `name`, if any.
    pub fn named(name: &str) -> Option<Layout> {
        Self::ALL.into_iter().find(|l| l.name() == name)
    }

    /// What to seed for `rows` token rows with `due_share` of the families'
    /// rows due.
    fn shape(self, rows: i64, due_share: f64) -> seed::Shape {
        let (family_rows, idle_rows) = match self {
            Layout::Interleaved => (rows / 2, rows - rows / 2),
            _ => (rows, 0),
        };
        seed::Shape {
            family_rows,
            due: (family_rows as f64 * due_share.clamp(0.0, 0.9)) as i64,
            idle_rows,
            idle_layout: IdleRows::Interleaved,
            order: match self {
                Layout::Session | Layout::Ties => seed::Order::Session,
                Layout::Time | Layout::Interleaved => seed::Order::Time,
            },
            ties: self == Layout::Ties,
        }
    }
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self {
            rows: 1_000_000,
            due_share: 0.9,
            rotate_rate: 300.0,
            idle_seconds: 10.0,
            peer_cap: Duration::from_secs(60),
            scaling: None,
            batch_size: None,
            layouts: vec![Layout::Time],
            pace: None,
            repeat: 1,
        }
    }
}

/// Scratch databases of one bench run, dropped at the end whatever happens.
struct Scratch {
    admin: Client,
    server: DatabaseUrl,
    prefix: String,
    created: Vec<String>,
}

impl Scratch {
    /// Connects to `server` for scratch databases named `{prefix}_{pid}_…`.
    async fn open(server: &DatabaseUrl, prefix: &str) -> Result<Self> {
        Ok(Self {
            admin: server.connect().await?,
            server: server.clone(),
            prefix: format!("{prefix}_{}", std::process::id()),
            created: Vec::new(),
        })
    }

    async fn create(&mut self, suffix: &str, template: Option<&str>) -> Result<DatabaseUrl> {
        let name = format!("{}_{suffix}", self.prefix);
        // FILE_COPY: the default WAL_LOG strategy would write the whole copy
        // into the WAL and leave the next phase a checkpoint to pay for.
        let template = template.map_or(String::new(), |t| {
            format!(" TEMPLATE {}_{t} STRATEGY = FILE_COPY", self.prefix)
        });
        self.admin
            .batch_execute(&format!("CREATE DATABASE {name}{template}"))
            .await
            .map_err(db(format!("creating scratch database {name}")))?;
        self.created.push(name.clone());
        Ok(self.server.with_dbname(&name))
    }

    /// Drops the copy made for `suffix` once measured: left behind, its dead
    /// rows would have autovacuum working on it during the next phase.
    async fn drop(&mut self, suffix: &str) {
        let name = format!("{}_{suffix}", self.prefix);
        self.created.retain(|created| *created != name);
        self.drop_database(&name).await;
    }

    async fn drop_all(&mut self) {
        for name in std::mem::take(&mut self.created).into_iter().rev() {
            self.drop_database(&name).await;
        }
    }

    async fn drop_database(&self, name: &str) {
        if let Err(err) = self
            .admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .await
        {
            tracing::warn!(database = %name, error = %crate::error::describe(&err), "could not drop scratch database");
        }
    }
}

/// Runs the benchmark on `server`, which it uses only to create and drop
/// scratch databases of its own.
///
/// # Errors
/// The connection's or statement's error naming the step; scratch databases are
/// dropped either way.
pub async fn run(server: &DatabaseUrl, options: &BenchOptions) -> Result<Report> {
    let mut scratch = Scratch::open(server, "tj_bench").await?;
    let result = tokio::select! {
        result = run_in(&mut scratch, options) => result,
        signal = interrupted() => Err(signal),
    };
    scratch.drop_all().await;
    result
}

/// Waits for Ctrl-C or SIGTERM, so that a bench or soak stopped by hand or
/// by a supervisor still drops its scratch databases (gigabytes each) on
/// the server; returns the error the run ends with.
async fn interrupted() -> anyhow::Error {
    let name = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => tokio::select! {
            _ = tokio::signal::ctrl_c() => "Ctrl-C",
            _ = term.recv() => "SIGTERM",
        },
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            "Ctrl-C"
        }
    };
    fail(format!(
        "interrupted by {name}; its scratch databases were dropped"
    ))
}

/// A bench run that cannot go on, or found its scratch data not as it made
/// it.
fn fail(message: String) -> anyhow::Error {
    anyhow::anyhow!("bench: {message}")
}

async fn run_in(scratch: &mut Scratch, options: &BenchOptions) -> Result<Report> {
    let rounds = options.repeat.max(1);
    let mut idle = None;
    let mut batch_size = 0;
    let mut pace = false;
    let mut layouts = Vec::new();
    for (n, layout) in options.layouts.iter().copied().enumerate() {
        let template_suffix = format!("{}_template", layout.name());
        let template = scratch.create(&template_suffix, None).await?;
        eprintln!("layout {}: seeding {} rows", layout.name(), options.rows);
        let (due, policy, due_sql) = prepare(
            &template,
            layout.shape(options.rows, options.due_share),
            options.batch_size,
            options.pace,
        )
        .await?;
        (batch_size, pace) = policy;
        let targets = live_tokens(&template).await?;
        let traffic = (&targets, options.rotate_rate);

        if idle.is_none() {
            eprintln!(
                "idle baseline: {} rotations/s for {}s",
                options.rotate_rate, options.idle_seconds
            );
            let idle_db = scratch.create("idle", Some(&template_suffix)).await?;
            idle = Some(
                measure(&idle_db, Some(traffic), |_| async {
                    tokio::time::sleep(Duration::from_secs_f64(options.idle_seconds)).await;
                    Ok(0)
                })
                .await?,
            );
            scratch.drop("idle").await;
        }

        // Peers take minutes: they run on the first layout only, once.
        let order: Vec<&dyn Strategy> = strategy::ALL
            .iter()
            .copied()
            .filter(|s| n == 0 || s.role() != Role::Peer)
            .collect();
        let mut runs: Vec<Passes> = order.iter().map(|_| Passes::default()).collect();
        for round in 0..rounds {
            let mut turns: Vec<usize> = (0..order.len())
                .filter(|&i| round == 0 || order[i].role() != Role::Peer)
                .collect();
            if round % 2 == 1 {
                turns.reverse();
            }
            for i in turns {
                let strategy = order[i];
                let name = strategy.name();
                for loaded in [false, true] {
                    eprintln!(
                        "{} / {name}: deleting {due} due rows {}{}",
                        layout.name(),
                        if loaded {
                            format!("under {} rotations/s", options.rotate_rate)
                        } else {
                            "with nothing else running".to_string()
                        },
                        if rounds > 1 {
                            format!(" (round {} of {rounds})", round + 1)
                        } else {
                            String::new()
                        }
                    );
                    let suffix = format!("{}_{}", layout.name(), name.replace('-', "_"));
                    let copy = scratch.create(&suffix, Some(&template_suffix)).await?;
                    let cap = options.peer_cap;
                    let due_sql = due_sql.as_str();
                    let run = measure(&copy, loaded.then_some(traffic), |client| async move {
                        strategy.purge(&client, due_sql, cap).await
                    })
                    .await?;
                    scratch.drop(&suffix).await;
                    if loaded {
                        runs[i].loaded.push(run);
                    } else {
                        runs[i].quiet.push(run);
                    }
                }
            }
        }
        let strategies = order
            .iter()
            .zip(&runs)
            .map(|(strategy, runs)| StrategyResult::new(*strategy, &runs.quiet, &runs.loaded, due))
            .collect();
        scratch.drop(&template_suffix).await;
        layouts.push(LayoutResult::new(layout, due, strategies));
    }
    let idle = idle.ok_or_else(|| fail("no layout to measure".into()))?;

    let mut scaling = Vec::new();
    if let Some((due, live)) = options.scaling {
        for placement in [IdleRows::Recent, IdleRows::Interleaved] {
            scaling.push(scale(scratch, due, live, placement, options.batch_size).await?);
        }
    }
    Ok(Report {
        rows: options.rows,
        rotate_rate: options.rotate_rate,
        batch_size,
        pace,
        repeat: rounds,
        idle_rotate_p50_ms: idle.p50_ms,
        idle_rotate_p99_ms: idle.p99_ms,
        idle_rotate_failures: idle.failures,
        machine: Machine::detect(&scratch.admin).await,
        layouts,
        scaling,
    })
}

/// Migrates, seeds and checkpoints a template, with `batch_size` and `pace`
/// (when given) in its policy; returns its due row count, the policy's batch
/// size and pace, and the due rows' predicate ([`strategy::due_predicate`]).
async fn prepare(
    url: &DatabaseUrl,
    shape: seed::Shape,
    batch_size: Option<i32>,
    pace: Option<bool>,
) -> Result<(i64, (i32, bool), String)> {
    let mut client = url.connect().await?;
    migrate(
        &mut client,
        &crate::operator::MigrateOptions {
            schedule: crate::operator::ScheduleChoice::Off,
            ..Default::default()
        },
    )
    .await?;
    let due = seed::seed(&client, shape, 1).await?;
    let policy = client
        .query_one(
            "UPDATE auth.cleanup_policy
             SET batch_size = coalesce($1, batch_size), pace = coalesce($2, pace)
             RETURNING batch_size, pace",
            &[&batch_size, &pace],
        )
        .await
        .map_err(db("setting the policy's batch size and pace"))?;
    client
        .batch_execute("CREATE EXTENSION IF NOT EXISTS pg_prewarm; CHECKPOINT")
        .await
        .map_err(db("preparing the template"))?;
    Ok((
        due,
        (policy.get(0), policy.get(1)),
        strategy::due_predicate(&client).await?,
    ))
}

async fn live_tokens(url: &DatabaseUrl) -> Result<Arc<load::Targets>> {
    let client = url.connect().await?;
    let rows = client
        .query(
            "SELECT session_id, generation::bigint FROM auth.refresh_tokens
             WHERE revoked_at IS NULL ORDER BY md5(session_id::text) LIMIT 100000",
            &[],
        )
        .await
        .map_err(db("listing live tokens"))?;
    if rows.is_empty() {
        return Err(fail("the seeded table has no live token to rotate".into()));
    }
    Ok(Arc::new(load::Targets::new(
        rows.iter().map(|r| (r.get(0), r.get(1))).collect(),
    )))
}

/// One strategy's runs on one layout: alone, and under rotation load.
#[derive(Default)]
struct Passes {
    quiet: Vec<Measured>,
    loaded: Vec<Measured>,
}

/// What happened while one strategy (or nothing) ran, alone or under
/// rotation load.
pub struct Measured {
    /// Rows the strategy deleted.
    pub rows_deleted: i64,
    /// Its wall time.
    pub seconds: f64,
    /// WAL written meanwhile (rotations' included, under load).
    pub wal_bytes: i64,
    /// Rotation latency quantiles over the strategy's window (0 alone).
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Rotations that errored or were not 'rotated'.
    pub failures: usize,
}

/// Warms the copy's caches, starts rotations (when `traffic` gives targets
/// and a rate), runs `work` once they are flowing, and stops them when it
/// returns.
async fn measure<F, Fut>(
    url: &DatabaseUrl,
    traffic: Option<(&Arc<load::Targets>, f64)>,
    work: F,
) -> Result<Measured>
where
    F: FnOnce(Client) -> Fut,
    Fut: std::future::Future<Output = Result<i64>>,
{
    let client = url.connect().await?;
    client
        .batch_execute(
            "SELECT pg_prewarm(c.oid) FROM pg_class c
             WHERE c.relnamespace = 'auth'::regnamespace AND c.relkind IN ('r', 'i');
             CHECKPOINT",
        )
        .await
        .map_err(db("warming the copy's caches"))?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let traffic = traffic.map(|(targets, rate)| {
        tokio::spawn(load::run(url.pool(16), targets.clone(), rate, stop_rx))
    });
    if traffic.is_some() {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    let wal_start: String = client
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .map_err(db("reading the WAL position"))?
        .get(0);
    let started = Instant::now();
    let worker = url.connect().await?;
    let outcome = work(worker).await;
    let finished = Instant::now();
    let wal_bytes: i64 = client
        .query_one(
            "SELECT (pg_current_wal_lsn() - $1::text::pg_lsn)::bigint",
            &[&wal_start],
        )
        .await
        .map_err(db("reading the WAL position"))?
        .get(0);
    let _ = stop_tx.send(true);
    let samples = match traffic {
        Some(handle) => handle.await.unwrap_or_default(),
        None => Vec::new(),
    };
    let rows_deleted = outcome?;
    Ok(Measured {
        rows_deleted,
        seconds: (finished - started).as_secs_f64(),
        wal_bytes,
        p50_ms: load::quantile(&samples, started, finished, 0.50),
        p99_ms: load::quantile(&samples, started, finished, 0.99),
        failures: samples
            .iter()
            .filter(|s| !s.ok && s.scheduled >= started && s.scheduled <= finished)
            .count(),
    })
}

/// Purge time for `due` rows with `live` and then 5 x `live` live rows laid
/// out as `layout`.
async fn scale(
    scratch: &mut Scratch,
    due: i64,
    live: i64,
    placement: IdleRows,
    batch_size: Option<i32>,
) -> Result<Scaling> {
    let mut seconds = Vec::new();
    for factor in [1, 5] {
        let family_rows = (due as f64 / 0.9).ceil() as i64;
        eprintln!(
            "scaling: {due} due rows with {} live rows ({placement:?})",
            live * factor
        );
        let suffix = format!("scale_{placement:?}_{factor}").to_lowercase();
        let url = scratch.create(&suffix, None).await?;
        let shape = seed::Shape {
            family_rows,
            due,
            idle_rows: live * factor,
            idle_layout: placement,
            order: seed::Order::Time,
            ties: false,
        };
        let (_, _, due_sql) = prepare(&url, shape, batch_size, None).await?;
        let due_sql = due_sql.as_str();
        let run = measure(&url, None, |client| async move {
            strategy::TokenJanitor
                .purge(&client, due_sql, Duration::ZERO)
                .await
        })
        .await?;
        scratch.drop(&suffix).await;
        seconds.push((live * factor, run.seconds));
    }
    Ok(Scaling {
        layout: placement,
        due,
        live_rows: seconds.iter().map(|s| s.0).collect(),
        seconds: seconds.iter().map(|s| s.1).collect(),
        ratio: seconds[1].1 / seconds[0].1,
    })
}
