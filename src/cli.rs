//! The `token-janitor` command line, which src/main.rs runs. It lives in the
//! library so that what it uses of it stays private to the crate.

use std::process::ExitCode;

use crate::bench::{self, BenchOptions, Layout, SoakOptions};
use crate::migrate::{self, MigrateOptions};
use crate::schedule::{self, CronDatabase, ScheduleChoice};
use crate::verify::{VerifyOptions, verify};
use crate::{DatabaseUrl, Schema, status};
use anyhow::Context;
use clap::{Parser, Subcommand};

/// A refresh-token store for PostgreSQL whose cleanup runs inside the database.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// PostgreSQL URL, e.g. postgres://user:password@host:5432/dbname.
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    database_url: Option<String>,

    /// PostgreSQL URL of the database pg_cron lives in (cron.database_name),
    /// for migrate, verify and status when that is not the application's.
    /// Default: the --database-url with that database name.
    #[arg(long, env = "CRON_DATABASE_URL", global = true, hide_env_values = true)]
    cron_database_url: Option<String>,

    /// How log lines on stderr look: human (coloured only when stderr is a
    /// terminal) or json (one object per line, for log shippers).
    #[arg(long, value_enum, default_value_t = LogFormat::Human, global = true)]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Apply migrations, re-apply the SQL definitions, build the purge's
    /// indexes and schedule the cleanup with pg_cron. Safe on every deploy,
    /// from several instances at once.
    Migrate {
        /// The schema token-janitor lives in: a lowercase identifier, not
        /// public, information_schema or pg_*. Another schema than auth
        /// installs the same objects there (beside someone else's auth, e.g.
        /// Supabase's), and its job runs `CALL NAME.run_token_cleanup()`.
        #[arg(long, default_value = crate::schema::DEFAULT_SCHEMA, value_name = "NAME", value_parser = schema_name)]
        schema: Schema,

        /// Skip everything pg_cron-related (for servers without pg_cron); run
        /// `CALL auth.run_token_cleanup()` (NAME with --schema) from your own
        /// scheduler instead.
        #[arg(long, conflicts_with = "schedule")]
        no_schedule: bool,

        /// When the cleanup runs: a 5-field cron expression, in UTC, minute
        /// granularity (pg_cron 1.4). Default: the schedule this database's
        /// job already has, or */5 * * * * when it has none.
        #[arg(long, value_name = "CRON")]
        schedule: Option<String>,

        /// The role applications use: EXECUTE on the lifecycle functions
        /// only. Created NOLOGIN when missing; grant it to your app's login
        /// role. Default: token_janitor_app in schema auth, NAME_app with
        /// --schema NAME.
        #[arg(long, value_name = "ROLE")]
        app_role: Option<String>,

        /// The read-only role verify and status can use. Created NOLOGIN when
        /// missing. Default: token_janitor_monitor in schema auth,
        /// NAME_monitor with --schema NAME.
        #[arg(long, value_name = "ROLE")]
        monitor_role: Option<String>,

        /// The role that owns the schema's token-janitor objects and that the
        /// pg_cron job runs as; never a superuser. Default: when migrate runs
        /// as a superuser, token_janitor_owner in schema auth and NAME_owner
        /// with --schema NAME (created when missing, LOGIN without a password:
        /// pg_cron connects as it), else the connected role itself.
        #[arg(long, value_name = "ROLE")]
        owner_role: Option<String>,
    },

    /// Check the installation, the schedule, the recent runs and the purge
    /// itself (a self-test that is rolled back). Changes no data. Exits 0 only
    /// when no check fails.
    Verify {
        /// The schema token-janitor was installed in (migrate --schema).
        #[arg(long, default_value = crate::schema::DEFAULT_SCHEMA, value_name = "NAME", value_parser = schema_name)]
        schema: Schema,

        /// Print one JSON document instead of one line per check.
        #[arg(long)]
        json: bool,

        /// The installation has no pg_cron job (migrate --no-schedule): skip
        /// the pg_cron checks.
        #[arg(long, conflicts_with = "schedule")]
        no_schedule: bool,

        /// The schedule migrate installed, to check the job against.
        #[arg(long, default_value = schedule::DEFAULT_SCHEDULE, value_name = "CRON")]
        schedule: String,

        /// Warn when more rows than this are due for deletion.
        #[arg(long, default_value_t = 1_000_000, value_name = "ROWS",
              value_parser = clap::value_parser!(i64).range(0..))]
        backlog_warn: i64,
    },

    /// Show token rows by state, the due backlog, sizes, the policy, the
    /// schedule and the last runs.
    Status {
        /// The schema token-janitor was installed in (migrate --schema).
        #[arg(long, default_value = crate::schema::DEFAULT_SCHEMA, value_name = "NAME", value_parser = schema_name)]
        schema: Schema,

        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Human)]
        format: Format,

        /// Same as --format json.
        #[arg(long, conflicts_with = "format")]
        json: bool,

        /// Count every row instead of estimating on tables over 100,000 rows
        /// (scans the whole token table).
        #[arg(long)]
        exact: bool,

        /// How many recent runs to show.
        #[arg(long, default_value_t = 10, value_name = "N",
              value_parser = clap::value_parser!(i64).range(1..=1000))]
        runs: i64,
    },

    /// Benchmark the purge against a single DELETE and the cleanup shapes of
    /// other auth servers, alone and under concurrent rotations, on scratch databases
    /// it creates on the server and drops afterwards; or, with --soak, the
    /// storage over time under token traffic with time compressed.
    Bench(BenchArgs),
}

/// Arguments of `bench`.
#[derive(clap::Args)]
struct BenchArgs {
    /// Soak instead of comparing purges: on one scratch database, sessions
    /// log in, refresh (open loop, --rotate-rate), log out and are
    /// abandoned, `CALL auth.run_token_cleanup()` runs on a compressed
    /// schedule and autovacuum as the server sets it; reports the size of
    /// the tables and indexes, token rows per live session and rotate p99
    /// over time. Time is compressed by scaling the policy: each session
    /// refreshes every --sessions / --rotate-rate seconds, standing for 15
    /// minutes (docs/performance.md, Soak).
    #[arg(long, conflicts_with_all = ["rows", "due_share", "idle_seconds", "peer_cap_seconds", "scaling", "layouts", "repeat"])]
    soak: bool,

    /// Length of the soak in minutes, its warm-up (the first 30%) included;
    /// fractions allowed (0.5 for a quick look).
    #[arg(long, default_value_t = 10.0, requires = "soak", value_parser = positive)]
    minutes: f64,

    /// Sessions logged in throughout the soak, each refreshing in turn.
    #[arg(long, default_value_t = 1500, requires = "soak", value_parser = clap::value_parser!(u32).range(10..=1_000_000))]
    sessions: u32,

    /// Token rows to seed (ten per family).
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(i64).range(1_000..=100_000_000))]
    rows: i64,

    /// Share of the rows that are due, 0 to 0.9 (ten tokens per family, the
    /// newest live).
    #[arg(long, default_value_t = 0.9, value_parser = share)]
    due_share: f64,

    /// auth.rotate_token calls per second during every phase (open loop).
    #[arg(long, default_value_t = 300.0, value_parser = positive)]
    rotate_rate: f64,

    /// Seconds of the idle baseline (rotations, no purge).
    #[arg(long, default_value_t = 10.0, value_parser = positive)]
    idle_seconds: f64,

    /// Seconds after which a peer shape stops and reports the rate it reached.
    #[arg(long, default_value_t = 60.0, value_parser = positive)]
    peer_cap_seconds: f64,

    /// Also measure scaling: purge time for --scaling-due rows next to
    /// --scaling-live and 5x --scaling-live live rows, with the live rows
    /// after the due ones in time (recent) and between them (interleaved).
    #[arg(long)]
    scaling: bool,

    /// Due rows of the scaling tables.
    #[arg(long, default_value_t = 100_000, requires = "scaling", value_parser = clap::value_parser!(i64).range(1_000..))]
    scaling_due: i64,

    /// auth.cleanup_policy.batch_size for the token-janitor runs (default:
    /// the policy's default).
    #[arg(long, value_parser = clap::value_parser!(i32).range(1..=100_000))]
    batch_size: Option<i32>,

    /// auth.cleanup_policy.pace for the token-janitor runs, on or off: with
    /// it on, a run takes batches of an eighth of batch_size while
    /// transactions come and go on the token table (default: the policy's,
    /// on).
    #[arg(long, value_name = "on|off", value_parser = on_off)]
    pace: Option<bool>,

    /// Runs of single-delete and token-janitor on each layout, each on a
    /// fresh copy in alternating order; the report gives each one's median
    /// and lists every run's seconds (peers run once). On a shared or
    /// virtual machine one run's ratio can move by 0.2 from the next: take
    /// 3 or 5 before comparing.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=9))]
    repeat: u8,

    /// Live rows of the smaller scaling table.
    #[arg(long, default_value_t = 500_000, requires = "scaling", value_parser = clap::value_parser!(i64).range(1_000..))]
    scaling_live: i64,

    /// Heap layout to measure, repeatable: time (rows in issue order),
    /// session (a session's rows together), interleaved (live rows between
    /// the due ones), ties (a mass revocation: a generation's due rows share
    /// one revoke time), or all. Every strategy runs on the first;
    /// single-delete and token-janitor on each.
    #[arg(long = "layout", value_name = "NAME", default_value = "time", value_parser = layout)]
    layouts: Vec<Vec<Layout>>,

    /// Write the report as JSON here.
    #[arg(long, value_name = "PATH")]
    json: Option<std::path::PathBuf>,

    /// Write the Markdown table here (it is printed either way).
    #[arg(long, value_name = "PATH")]
    markdown: Option<std::path::PathBuf>,

    /// Draw the chart into this PNG.
    #[arg(long, value_name = "PATH")]
    png: Option<std::path::PathBuf>,
}

fn layout(text: &str) -> Result<Vec<Layout>, String> {
    if text == "all" {
        return Ok(Layout::ALL.to_vec());
    }
    Layout::named(text).map(|l| vec![l]).ok_or_else(|| {
        let names: Vec<&str> = Layout::ALL.iter().map(|l| l.name()).collect();
        format!("expected all or one of {}", names.join(", "))
    })
}

fn schema_name(text: &str) -> Result<Schema, String> {
    Schema::new(text).map_err(|err| cli_terms(&err.to_string()))
}

fn share(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(v) if (0.0..=0.9).contains(&v) => Ok(v),
        _ => Err(format!("'{text}' is not a share between 0 and 0.9")),
    }
}

fn on_off(text: &str) -> Result<bool, String> {
    match text {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(format!("'{text}' is neither on nor off")),
    }
}

fn positive(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() => Ok(v),
        _ => Err(format!("'{text}' is not a positive number")),
    }
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    /// A table for people.
    Human,
    /// One JSON document.
    Json,
    /// Prometheus text exposition (node_exporter textfile collector).
    Prometheus,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// One line per event, for people.
    Human,
    /// One JSON object per line.
    Json,
}

/// Logs go to stderr, filtered by RUST_LOG (default: token_janitor=info),
/// never below info for tokio-postgres, whose debug lines carry every
/// statement's parameters (token hashes, authenticators, seals). Colour codes
/// only reach a terminal: a file, a pipe or a log shipper gets plain text or
/// JSON.
fn init_logs(format: LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "token_janitor=info".into())
        .add_directive(
            "tokio_postgres=info"
                .parse()
                .expect("a constant directive parses"),
        );
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => logs.json().init(),
    }
}

fn database_url(cli: &Cli) -> anyhow::Result<DatabaseUrl> {
    let url = cli.database_url.as_deref().context(
        "no database given: pass --database-url postgres://user@host:port/dbname or set DATABASE_URL",
    )?;
    Ok(DatabaseUrl::parse(url)?)
}

/// Where migrate, verify and status find pg_cron when it is in another
/// database.
fn cron_database(cli: &Cli, url: &DatabaseUrl) -> anyhow::Result<CronDatabase> {
    Ok(match cli.cron_database_url.as_deref() {
        Some(cron_url) => CronDatabase::At(DatabaseUrl::parse(cron_url)?),
        None => CronDatabase::Like(url.clone()),
    })
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let url = database_url(&cli)?;
    let cron_database = cron_database(&cli, &url)?;
    match cli.command {
        Command::Migrate {
            schema,
            no_schedule,
            schedule,
            app_role,
            monitor_role,
            owner_role,
        } => {
            let mut client = url.connect().await?;
            let command = schema.job_command();
            let options = MigrateOptions {
                schema,
                schedule: match (no_schedule, schedule) {
                    (true, _) => ScheduleChoice::Off,
                    (false, Some(cron)) => ScheduleChoice::Set(cron),
                    (false, None) => ScheduleChoice::KeepOrDefault,
                },
                app_role,
                monitor_role,
                owner_role,
                cron_database: Some(cron_database),
                ..MigrateOptions::default()
            };
            let report = migrate::migrate(&mut client, &options).await?;
            println!(
                "migrated {url}: {} migration(s) applied, {} index(es) built, {} rebuilt, \
                 {} replaced index(es) dropped, {} session expiry floor(s) set; owned by role {}",
                report.applied.len(),
                report.indexes_built.len(),
                report.indexes_rebuilt.len(),
                report.indexes_retired.len(),
                report.expiry_floors_set,
                report.owner
            );
            match (report.job_id, &report.job_name, &report.schedule) {
                (Some(id), Some(name), Some(cron)) => println!(
                    "pg_cron job '{name}' (id {id}) runs `{}` in database {} on '{cron}' (UTC) \
                     as role {}",
                    command,
                    url.dbname(),
                    report.owner
                ),
                _ => println!(
                    "no schedule installed (--no-schedule): run `{}` from your own scheduler, \
                     outside a transaction block, every few minutes",
                    command
                ),
            }
        }
        Command::Verify {
            schema,
            json,
            no_schedule,
            schedule,
            backlog_warn,
        } => {
            let options = VerifyOptions {
                schema,
                schedule: (!no_schedule).then_some(schedule),
                backlog_warn,
                cron_database: Some(cron_database),
            };
            let report = verify(&url, &options).await;
            if json {
                println!("{}", cli_terms(&serde_json::to_string_pretty(&report)?));
            } else {
                println!("{}", cli_terms(&report.to_string()));
            }
            if !report.ok {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Status {
            schema,
            format,
            json,
            exact,
            runs,
        } => {
            let client = url.connect().await?;
            // Without pg_cron, status still shows everything but the job.
            let cron_db = match schedule::connect_cron_database(&client, Some(&cron_database)).await
            {
                Err(crate::operator::Error::PgCronNotPreloaded { .. }) => None,
                other => other?,
            };
            let status =
                status::status_with_cron(&client, cron_db.as_ref(), &schema, exact, runs).await?;
            match if json { Format::Json } else { format } {
                Format::Human => print!("{status}"),
                Format::Json => println!("{}", serde_json::to_string_pretty(&status)?),
                Format::Prometheus => print!("{}", status.prometheus()),
            }
        }
        Command::Bench(args) if args.soak => {
            let options = SoakOptions {
                duration: std::time::Duration::from_secs_f64(args.minutes * 60.0),
                sessions: args.sessions as usize,
                rotate_rate: args.rotate_rate,
                batch_size: args.batch_size,
                pace: args.pace,
            };
            let report = bench::run_soak(&url, &options).await?;
            write_report(&args, &report.markdown(), &report, |path| report.png(path))?;
        }
        Command::Bench(args) => {
            let options = BenchOptions {
                rows: args.rows,
                due_share: args.due_share,
                rotate_rate: args.rotate_rate,
                idle_seconds: args.idle_seconds,
                peer_cap: std::time::Duration::from_secs_f64(args.peer_cap_seconds),
                scaling: args
                    .scaling
                    .then_some((args.scaling_due, args.scaling_live)),
                batch_size: args.batch_size,
                pace: args.pace,
                repeat: usize::from(args.repeat),
                layouts: args.layouts.concat().into_iter().fold(
                    Vec::new(),
                    |mut layouts, layout| {
                        if !layouts.contains(&layout) {
                            layouts.push(layout);
                        }
                        layouts
                    },
                ),
            };
            let report = bench::run(&url, &options).await?;
            write_report(&args, &report.markdown(), &report, |path| report.png(path))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints a bench report's Markdown and writes it, its JSON and its chart
/// where `args` asks.
fn write_report(
    args: &BenchArgs,
    markdown: &str,
    json: &impl serde::Serialize,
    png: impl FnOnce(&std::path::Path) -> Result<(), String>,
) -> anyhow::Result<()> {
    print!("{markdown}");
    if let Some(path) = &args.markdown {
        std::fs::write(path, markdown).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(json)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.png {
        png(path).map_err(anyhow::Error::msg)?;
    }
    Ok(())
}

/// The library's messages name its options (`MigrateOptions::schema`,
/// `ScheduleChoice::Off`, …); on the command line they are flags. Longer
/// names first, so that none is cut by a shorter one it contains.
const CLI_TERMS: &[(&str, &str)] = &[
    ("VerifyOptions::schedule is None", "--no-schedule"),
    ("ScheduleChoice::Off", "--no-schedule"),
    ("VerifyOptions::schedule", "--schedule"),
    ("MigrateOptions::schedule", "--schedule"),
    (
        "MigrateOptions::cron_database",
        "--cron-database-url or CRON_DATABASE_URL",
    ),
    ("MigrateOptions::owner_role", "--owner-role"),
    ("MigrateOptions::app_role", "--app-role"),
    ("MigrateOptions::monitor_role", "--monitor-role"),
    ("MigrateOptions::schema", "--schema"),
    ("VerifyOptions::schema", "--schema"),
    (
        "the database URL",
        "the database URL (--database-url or DATABASE_URL)",
    ),
];

/// `text` with the library's option names as this command line's flags.
fn cli_terms(text: &str) -> String {
    CLI_TERMS
        .iter()
        .fold(text.to_string(), |text, (library, cli)| {
            text.replace(library, cli)
        })
}

/// Runs the command line: parses the arguments, runs the command, prints
/// its error in the command line's terms. Not API: the `token-janitor`
/// binary's entry point.
#[tokio::main]
pub async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logs(cli.log_format);
    match run(cli).await {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {}", cli_terms(&format!("{err:#}")));
            ExitCode::FAILURE
        }
    }
}
