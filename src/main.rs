//! The `token-janitor` command line.

use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use token_janitor::{DatabaseUrl, MigrateOptions, migrate, schedule};

/// A refresh-token store for PostgreSQL whose cleanup runs inside the database.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// PostgreSQL URL, e.g. postgres://user:password@host:5432/dbname.
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    database_url: Option<String>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Apply migrations, re-apply the SQL definitions, build the purge's
    /// indexes and schedule the cleanup with pg_cron. Safe on every deploy,
    /// from several instances at once.
    Migrate {
        /// Skip everything pg_cron-related (for servers without pg_cron); run
        /// `CALL auth.run_token_cleanup()` from your own scheduler instead.
        #[arg(long, conflicts_with = "schedule")]
        no_schedule: bool,

        /// When the cleanup runs: a 5-field cron expression, in UTC, minute
        /// granularity (pg_cron 1.4).
        #[arg(long, default_value = schedule::DEFAULT_SCHEDULE, value_name = "CRON")]
        schedule: String,
    },
}

fn database_url(cli: &Cli) -> anyhow::Result<DatabaseUrl> {
    let url = cli.database_url.as_deref().context(
        "no database given: pass --database-url postgres://user@host:port/dbname or set DATABASE_URL",
    )?;
    Ok(DatabaseUrl::parse(url)?)
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let url = database_url(&cli)?;
    match cli.command {
        Command::Migrate {
            no_schedule,
            schedule,
        } => {
            let mut client = url.connect().await?;
            let options = MigrateOptions {
                schedule: (!no_schedule).then_some(schedule),
                ..MigrateOptions::default()
            };
            let report = migrate(&mut client, &options).await?;
            println!(
                "migrated {url}: {} migration(s) applied, {} index(es) built, {} rebuilt",
                report.applied.len(),
                report.indexes_built.len(),
                report.indexes_rebuilt.len()
            );
            match (report.job_id, &options.schedule) {
                (Some(id), Some(cron)) => println!(
                    "pg_cron job {} (id {id}) runs `{}` on '{cron}' (UTC)",
                    schedule::JOB_NAME,
                    schedule::JOB_COMMAND
                ),
                _ => println!(
                    "no schedule installed (--no-schedule): run `{}` from your own scheduler, \
                     outside a transaction block, every few minutes",
                    schedule::JOB_COMMAND
                ),
            }
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "token_janitor=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
