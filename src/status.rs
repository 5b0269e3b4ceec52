//! `status`: sizes, token rows by state, the due backlog, the policy, the
//! schedule and the last runs, as a human table, JSON or Prometheus text.

use serde::Serialize;
use tokio_postgres::Client;

use crate::error::db;
use crate::operator::Result;
use crate::schedule::{self, CronConnection};
use crate::schema::Schema;

/// Above this many rows (planner estimate), counts are estimates unless
/// `exact` is asked for.
const EXACT_BELOW: f32 = 100_000.0;

/// One table or index and its size.
///
/// ```
/// # fn show(status: &token_janitor::operator::Status) {
/// for relation in &status.relations {
///     println!("{}: {} bytes", relation.name, relation.bytes);
/// }
/// # }
/// ```
#[derive(Debug, Clone, Serialize)]
pub struct Relation {
    /// `auth.<name>`.
    pub name: String,
    /// "table" or "index".
    pub kind: &'static str,
    /// Bytes on disk (a table's without its indexes and TOAST).
    pub bytes: i64,
}

/// Count of something, and whether it is exact or the planner's estimate.
///
/// ```
/// # fn show(status: &token_janitor::operator::Status) {
/// for count in &status.backlog {
///     let how = if count.exact { "" } else { "about " };
///     println!("{} due: {how}{}", count.name, count.rows);
/// }
/// # }
/// ```
#[derive(Debug, Clone, Serialize)]
pub struct Count {
    /// What is counted (a state or a kind).
    pub name: String,
    /// How many.
    pub rows: i64,
    /// False for an estimate.
    pub exact: bool,
}

/// Serialises (kind, rows) pairs as one field per kind, as the run's
/// columns read.
fn kinds_as_fields<S: serde::Serializer>(
    deleted: &[(String, i64)],
    serializer: S,
) -> std::result::Result<S::Ok, S::Error> {
    serializer.collect_map(deleted.iter().map(|(kind, rows)| (kind, rows)))
}

/// One row of `auth.cleanup_runs`.
///
/// ```
/// # fn show(status: &token_janitor::operator::Status) {
/// if let Some(last) = status.runs.first() {
///     println!("last run {}: {}", last.started_at, last.status.as_str());
/// }
/// # }
/// ```
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    /// Run id.
    pub id: i64,
    /// Start time (RFC 3339, UTC).
    pub started_at: String,
    /// Seconds since the Unix epoch.
    pub started_unix: f64,
    /// Duration in seconds, when finished.
    pub seconds: Option<f64>,
    /// How it ended, or that it is running.
    pub status: RunStatus,
    /// Rows deleted per kind of `auth.purge_targets` (expired,
    /// expired_in_place, revoked, rotated, security_events, sessions), in
    /// its order.
    #[serde(flatten, serialize_with = "kinds_as_fields")]
    pub deleted: Vec<(String, i64)>,
    /// Batches committed.
    pub batches: i32,
    /// Error text of a failed run.
    pub error: Option<String>,
}

/// How a cleanup run ended (`auth.cleanup_runs.status`), or that it is
/// still running.
///
/// ```
/// use token_janitor::operator::{RunStatus, Status};
///
/// /// Whether the last finished run deleted everything that was due.
/// fn caught_up(status: &Status) -> bool {
///     status.runs.iter().find(|run| run.status != RunStatus::Skipped && run.status != RunStatus::Running)
///         .is_some_and(|run| run.status == RunStatus::Ok)
/// }
/// # let _ = caught_up;
/// assert_eq!(RunStatus::Partial.as_str(), "partial");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum RunStatus {
    /// Still running (or killed without a chance to record its end).
    Running,
    /// Deleted everything that was due.
    Ok,
    /// Stopped at its time budget, or left rows other transactions held:
    /// the next run goes on.
    Partial,
    /// Another run held the cleanup's lock.
    Skipped,
    /// Failed: `error` says why.
    Failed,
}

impl RunStatus {
    const ALL: [RunStatus; 5] = [
        Self::Running,
        Self::Ok,
        Self::Partial,
        Self::Skipped,
        Self::Failed,
    ];

    /// The SQL spelling, as `auth.cleanup_runs.status` holds it.
    ///
    /// ```
    /// assert_eq!(token_janitor::operator::RunStatus::Ok.as_str(), "ok");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Ok => "ok",
            Self::Partial => "partial",
            Self::Skipped => "skipped",
            Self::Failed => "failed",
        }
    }

    fn parse(text: &str) -> crate::Result<Self> {
        Self::ALL
            .into_iter()
            .find(|status| status.as_str() == text)
            .ok_or_else(|| {
                crate::Error::UnexpectedResponse(format!("a cleanup run status '{text}'"))
            })
    }
}

/// The pg_cron job, when there is one.
///
/// ```
/// # fn show(status: &token_janitor::operator::Status) {
/// match &status.job {
///     Some(job) => println!("`{}` on '{}', active: {}", job.command, job.schedule, job.active),
///     None => println!("no pg_cron job in this database"),
/// }
/// # }
/// ```
#[derive(Debug, Clone, Serialize)]
pub struct Job {
    /// Cron expression (UTC).
    pub schedule: String,
    /// The job's command.
    pub command: String,
    /// cron.job.active.
    pub active: bool,
}

/// Security events of one kind (`auth.security_event_summary`): counts and
/// times only, never whom they were about.
///
/// ```
/// # fn show(status: &token_janitor::operator::Status) {
/// for kind in &status.security_events {
///     println!("{}: {} in the last 24 h", kind.kind, kind.last_24h);
/// }
/// # }
/// ```
#[derive(Debug, Clone, Serialize)]
pub struct SecurityEvents {
    /// The kind, e.g. reuse_detected.
    pub kind: String,
    /// How many events (one per family, repeats counted on it) were seen in
    /// the last 24 hours.
    pub last_24h: i64,
    /// When the last one kept was last seen (RFC 3339, UTC).
    pub last_at: Option<String>,
}

/// Everything `status` shows.
///
/// ```
/// # fn show(status: &token_janitor::operator::Status) {
/// println!("{} session(s), {} run(s) shown", status.sessions.rows, status.runs.len());
/// # }
/// ```
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// The schema token-janitor is installed in.
    pub schema: String,
    /// Tables and indexes of the schema that are token-janitor's.
    pub relations: Vec<Relation>,
    /// Token rows by state: live, expired, revoked, rotated.
    pub tokens: Vec<Count>,
    /// Sessions.
    pub sessions: Count,
    /// Due rows per kind of `auth.purge_targets` a batch deletes by itself:
    /// expired, expired_in_place, revoked, rotated, security_events.
    pub backlog: Vec<Count>,
    /// The cleanup policy, setting -> value.
    pub policy: Vec<(String, String)>,
    /// The pg_cron job, if pg_cron is installed and the job exists.
    pub job: Option<Job>,
    /// The last runs, newest first.
    pub runs: Vec<Run>,
    /// Security events by kind.
    pub security_events: Vec<SecurityEvents>,
    /// Security events ever recorded by committed transactions, of any kind,
    /// repeats included (never decreases: the purge does not lower it).
    pub security_events_recorded: i64,
}

/// The (name, rows, exact) rows `sql` (written for schema `auth`) returns
/// in `schema` for its one parameter, `p_exact`.
async fn counts(
    client: &Client,
    schema: &Schema,
    sql: &str,
    exact: Option<bool>,
    context: &str,
) -> Result<Vec<Count>> {
    Ok(client
        .query(&*schema.sql(sql), &[&exact])
        .await
        .map_err(db(context))?
        .iter()
        .map(|r| Count {
            name: r.get(0),
            rows: r.get(1),
            exact: r.get(2),
        })
        .collect())
}

/// Collects the status of the install in `schema`, with pg_cron in this
/// database (the job is `None` when pg_cron is elsewhere). `exact` counts
/// every row (a full scan of the token table); otherwise large tables are
/// estimated. `runs` is how many runs to show.
///
/// ```no_run
/// use token_janitor::operator::{self, Outcome};
/// use token_janitor::{DatabaseUrl, Schema};
///
/// # async fn monitor() -> Result<(), operator::Error> {
/// let client = DatabaseUrl::parse("postgres://monitor@localhost/app")?.connect().await?;
/// let status = operator::status(&client, &Schema::default(), false, 3).await?;
/// print!("{status}"); // what `token-janitor status` prints
/// println!("{}", status.prometheus()); // or as Prometheus metrics
/// # Ok(())
/// # }
/// ```
///
/// # Errors
/// [`crate::Error::Db`] (in [`crate::operator::Error::Runtime`]) naming
/// what could not be read.
pub async fn status(client: &Client, schema: &Schema, exact: bool, runs: i64) -> Result<Status> {
    status_with_cron(client, None, schema, exact, runs).await
}

/// [`status`] of the install in `schema`, reading the job from pg_cron's
/// database when that is `cron` (see [`schedule::connect_cron_database`]).
///
/// # Errors
/// [`crate::Error::Db`] naming what could not be read.
pub async fn status_with_cron(
    client: &Client,
    cron: Option<&CronConnection>,
    schema: &Schema,
    exact: bool,
    runs: i64,
) -> Result<Status> {
    let search_path = crate::db::pin_search_path(client).await?;
    let status = read_status(client, cron, schema, exact, runs).await;
    crate::db::restore_search_path(client, &search_path).await?;
    status
}

/// What [`status_with_cron`] reads, under its pinned search_path.
async fn read_status(
    client: &Client,
    cron: Option<&CronConnection>,
    schema: &Schema,
    exact: bool,
    runs: i64,
) -> Result<Status> {
    let relations = client
        .query(
            &*schema.sql(
                "SELECT c.relname::text, CASE c.relkind WHEN 'i' THEN 'index' ELSE 'table' END,
                    pg_catalog.pg_relation_size(c.oid)
             FROM pg_catalog.pg_class c
             WHERE c.relnamespace = 'auth'::regnamespace AND c.relkind IN ('r', 'i')
               AND c.relowner = (SELECT t.relowner FROM pg_catalog.pg_class t
                                 WHERE t.oid = 'auth.cleanup_runs'::regclass)
             ORDER BY c.relkind DESC, c.relname",
            ),
            &[],
        )
        .await
        .map_err(db(
            "reading table sizes (is the schema installed? run token-janitor migrate)",
        ))?
        .iter()
        .map(|r| Relation {
            name: format!("{schema}.{}", r.get::<_, String>(0)),
            kind: if r.get::<_, &str>(1) == "index" {
                "index"
            } else {
                "table"
            },
            bytes: r.get(2),
        })
        .collect();

    let reltuples: f32 = client
        .query_one(
            &*schema.sql("SELECT greatest(reltuples, 0) FROM pg_catalog.pg_class WHERE oid = 'auth.refresh_tokens'::regclass"),
            &[],
        )
        .await
        .map_err(db("reading table statistics"))?
        .get(0);
    let exact = exact || reltuples < EXACT_BELOW;

    let mut tokens = counts(
        client,
        schema,
        "SELECT state, rows, exact FROM auth.token_counts(p_exact => $1)",
        Some(exact),
        "counting token rows and sessions",
    )
    .await?;
    let sessions = tokens
        .pop()
        .filter(|count| count.name == "sessions")
        .ok_or_else(|| {
            crate::Error::UnexpectedResponse(format!(
                "{schema}.token_counts returned no sessions row"
            ))
        })?;

    let backlog = counts(
        client,
        schema,
        "SELECT kind, due_rows, exact FROM auth.cleanup_backlog(p_exact => $1)",
        exact.then_some(true),
        "reading the due backlog",
    )
    .await?;

    let policy_row = client
        .query_one(
            &*schema.sql(
                "SELECT expired_retention::text, revoked_retention::text, rotated_retention::text,
                    batch_size::text, max_runtime::text, history_retention::text,
                    reuse_grace::text, max_ttl::text, audit_retention::text, pace::text,
                    token_history::text, coalesce(max_session_lifetime::text, 'none')
             FROM auth.cleanup_policy",
            ),
            &[],
        )
        .await
        .map_err(db(format!("reading {schema}.cleanup_policy")))?;
    let policy = [
        "expired_retention",
        "revoked_retention",
        "rotated_retention",
        "batch_size",
        "max_runtime",
        "history_retention",
        "reuse_grace",
        "max_ttl",
        "audit_retention",
        "pace",
        "token_history",
        "max_session_lifetime",
    ]
    .iter()
    .enumerate()
    .map(|(i, name)| (name.to_string(), policy_row.get::<_, String>(i)))
    .collect();

    let job = match schedule::find_job(client, cron, schema).await {
        // pg_cron's database grants a monitoring role nothing: show the rest.
        Err(err)
            if cron.is_some()
                && err.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) =>
        {
            tracing::warn!(error = %crate::error::describe(&err), "cannot read the pg_cron job");
            None
        }
        other => other.map_err(db("reading the pg_cron job"))?,
    }
    .map(|job| Job {
        schedule: job.schedule,
        command: job.command,
        active: job.active,
    });

    let runs = client
        .query(
            &*schema.sql("SELECT id, to_char(started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),
                    extract(epoch FROM started_at)::float8,
                    extract(epoch FROM finished_at - started_at)::float8,
                    status, batches, error,
                    ARRAY(SELECT t.kind FROM auth.purge_targets() WITH ORDINALITY t ORDER BY t.ordinality),
                    ARRAY(SELECT coalesce((r.deleted_by_kind ->> t.kind)::int8, 0)
                          FROM auth.purge_targets() WITH ORDINALITY t ORDER BY t.ordinality)
             FROM auth.cleanup_runs r ORDER BY started_at DESC, id DESC LIMIT $1"),
            &[&runs],
        )
        .await
        .map_err(db(format!("reading {schema}.cleanup_runs")))?
        .iter()
        .map(|r| {
            Ok(Run {
                id: r.get(0),
                started_at: r.get(1),
                started_unix: r.get(2),
                seconds: r.get(3),
                status: RunStatus::parse(r.get(4))?,
                batches: r.get(5),
                error: r.get(6),
                deleted: r
                    .get::<_, Vec<String>>(7)
                    .into_iter()
                    .zip(r.get::<_, Vec<i64>>(8))
                    .collect(),
            })
        })
        .collect::<crate::Result<_>>()?;

    let event_rows = client
        .query(
            &*schema.sql("SELECT kind, last_24h,
                    to_char(last_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), recorded_total
             FROM auth.security_event_summary()"),
            &[],
        )
        .await
        .map_err(db(format!("reading {schema}.security_event_summary()")))?;
    let security_events_recorded = event_rows.first().map_or(0, |r| r.get(3));
    let security_events = event_rows
        .iter()
        .map(|r| SecurityEvents {
            kind: r.get(0),
            last_24h: r.get(1),
            last_at: r.get(2),
        })
        .collect();

    Ok(Status {
        schema: schema.name().to_string(),
        relations,
        tokens,
        sessions,
        backlog,
        policy,
        job,
        runs,
        security_events,
        security_events_recorded,
    })
}

fn count_text(c: &Count) -> String {
    if c.exact {
        c.rows.to_string()
    } else {
        format!("~{}", c.rows)
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "token rows by state:")?;
        for c in &self.tokens {
            writeln!(f, "  {:<16} {:>14}", c.name, count_text(c))?;
        }
        writeln!(f, "  {:<16} {:>14}", "sessions", count_text(&self.sessions))?;
        writeln!(f, "due now (backlog):")?;
        for c in &self.backlog {
            writeln!(f, "  {:<16} {:>14}", c.name, count_text(c))?;
        }
        writeln!(f, "sizes:")?;
        for r in &self.relations {
            writeln!(f, "  {:<42} {:<5} {:>12} bytes", r.name, r.kind, r.bytes)?;
        }
        writeln!(f, "policy:")?;
        for (name, value) in &self.policy {
            writeln!(f, "  {name:<18} {value}")?;
        }
        match &self.job {
            Some(job) => writeln!(
                f,
                "schedule: '{}' (UTC), {}, runs `{}`",
                job.schedule,
                if job.active { "active" } else { "INACTIVE" },
                job.command
            )?,
            None => writeln!(
                f,
                "schedule: no pg_cron job runs `CALL {}.run_token_cleanup()` here",
                self.schema
            )?,
        }
        writeln!(
            f,
            "security events ({} recorded in all):",
            self.security_events_recorded
        )?;
        for e in &self.security_events {
            writeln!(
                f,
                "  {:<16} {:>6} in the last 24 h{}",
                e.kind,
                e.last_24h,
                e.last_at
                    .as_ref()
                    .map_or(String::new(), |at| format!(", newest {at}"))
            )?;
        }
        writeln!(f, "last runs:")?;
        if self.runs.is_empty() {
            writeln!(f, "  (none yet)")?;
        }
        for r in &self.runs {
            let deleted: Vec<String> = r
                .deleted
                .iter()
                .map(|(kind, rows)| format!("{rows:>8} {kind}"))
                .collect();
            writeln!(
                f,
                "  #{:<5} {} {:<8} {} {:>4} batches {}{}",
                r.id,
                r.started_at,
                r.status.as_str(),
                deleted.join(" "),
                r.batches,
                r.seconds
                    .map_or("running".to_string(), |s| format!("{s:.3}s")),
                r.error
                    .as_ref()
                    .map_or(String::new(), |e| format!("  error: {e}"))
            )?;
        }
        Ok(())
    }
}

impl Status {
    /// Prometheus text exposition, for node_exporter's textfile collector.
    ///
    /// ```
    /// use token_janitor::Schema;
    /// use token_janitor::operator;
    ///
    /// # async fn metrics(client: &token_janitor::tokio_postgres::Client) -> operator::Result<String> {
    /// // The body of a /metrics endpoint.
    /// Ok(operator::status(client, &Schema::default(), false, 1).await?.prometheus())
    /// # }
    /// ```
    pub fn prometheus(&self) -> String {
        let mut out = String::new();
        let mut typed = |name: &str, kind: &str, help: &str, samples: Vec<(String, f64)>| {
            out.push_str(&format!(
                "# HELP token_janitor_{name} {help}\n# TYPE token_janitor_{name} {kind}\n"
            ));
            for (labels, value) in samples {
                out.push_str(&format!("token_janitor_{name}{labels} {value}\n"));
            }
        };
        typed(
            "security_events_total",
            "counter",
            "Security events (reuse detections) ever recorded, repeats included.",
            vec![(String::new(), self.security_events_recorded as f64)],
        );
        let mut metric = |name: &str, help: &str, samples: Vec<(String, f64)>| {
            typed(name, "gauge", help, samples)
        };
        metric(
            "security_events_last_24h",
            "Security events seen in the last 24 hours (one per family), by kind.",
            self.security_events
                .iter()
                .map(|e| (format!("{{kind=\"{}\"}}", e.kind), e.last_24h as f64))
                .collect(),
        );
        metric(
            "token_rows",
            "Token rows by state (estimates on large tables).",
            self.tokens
                .iter()
                .map(|c| (format!("{{state=\"{}\"}}", c.name), c.rows as f64))
                .collect(),
        );
        metric(
            "sessions",
            "Sessions (token families).",
            vec![(String::new(), self.sessions.rows as f64)],
        );
        metric(
            "backlog_rows",
            "Token rows due for deletion now, by kind.",
            self.backlog
                .iter()
                .map(|c| (format!("{{kind=\"{}\"}}", c.name), c.rows as f64))
                .collect(),
        );
        metric(
            "relation_bytes",
            "Size on disk of each table and index of token-janitor's schema.",
            self.relations
                .iter()
                .map(|r| {
                    (
                        format!("{{relation=\"{}\",kind=\"{}\"}}", r.name, r.kind),
                        r.bytes as f64,
                    )
                })
                .collect(),
        );
        metric(
            "job_active",
            "1 when the pg_cron job exists and is active.",
            vec![(
                String::new(),
                if self.job.as_ref().is_some_and(|j| j.active) {
                    1.0
                } else {
                    0.0
                },
            )],
        );
        if let Some(last) = self.runs.iter().find(|r| r.status != RunStatus::Skipped) {
            metric(
                "last_run_start_seconds",
                "Start of the last run, Unix time.",
                vec![(String::new(), last.started_unix)],
            );
            metric(
                "last_run_duration_seconds",
                "Duration of the last finished run.",
                vec![(String::new(), last.seconds.unwrap_or(0.0))],
            );
            metric(
                "last_run_status",
                "1 for the status of the last run.",
                RunStatus::ALL
                    .into_iter()
                    .filter(|s| *s != RunStatus::Skipped)
                    .map(|s| {
                        (
                            format!("{{status=\"{}\"}}", s.as_str()),
                            if last.status == s { 1.0 } else { 0.0 },
                        )
                    })
                    .collect(),
            );
            metric(
                "last_run_deleted_rows",
                "Rows the last run deleted, by kind.",
                last.deleted
                    .iter()
                    .map(|(k, v)| (format!("{{kind=\"{k}\"}}"), *v as f64))
                    .collect(),
            );
        }
        out
    }
}
