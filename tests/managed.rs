//! End to end on a managed-like server (`scripts/pg.sh start-managed`): TCP
//! only over TLS, pg_cron in the `postgres` database, and a deployer that owns
//! the application database without being a superuser.

mod common;

use std::time::Duration;

use common::*;
use token_janitor::{ConnectFailure, DatabaseUrl, Error};

/// The deployer's URL: sslmode=verify-full with the server's CA.
fn managed() -> String {
    std::env::var("MANAGED_DATABASE_URL").expect(
        "MANAGED_DATABASE_URL is not set: run the tests with `make test`, or start the \
         managed-like server with `scripts/pg.sh start-managed` and export its URL",
    )
}

/// The deployer's password, which no message may show.
fn password() -> String {
    let url = managed();
    let credentials = url.split('@').next().unwrap();
    credentials.rsplit(':').next().unwrap().to_string()
}

/// The managed URL with `from` replaced by `to`.
fn managed_with(from: &str, to: &str) -> String {
    let url = managed();
    assert!(url.contains(from), "{url} has no {from}");
    url.replace(from, to)
}

/// Connecting with `url` fails; returns the error, checked not to show the password.
async fn refused_connection(url: &str) -> Error {
    let err = DatabaseUrl::parse(url)
        .unwrap()
        .connect()
        .await
        .expect_err(url);
    assert!(!err.to_string().contains(&password()), "{err}");
    err
}

/// The server sees this connection encrypted.
async fn assert_encrypted(client: &tokio_postgres::Client) {
    let tls: Vec<bool> = column(
        client,
        "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
    )
    .await;
    assert_eq!(tls, vec![true]);
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn the_deployer_migrates_over_verify_full_and_pg_cron_runs_the_job_in_the_app_database() {
    let url = DatabaseUrl::parse(&managed()).unwrap();
    let app = url.connect().await.unwrap();
    let started: std::time::SystemTime = app.query_one("SELECT now()", &[]).await.unwrap().get(0);

    let out = run_cli(&["migrate", "--schedule", "* * * * *"], &managed()).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("pg_cron job 'token-janitor cleanup: app.auth'"));

    // The job lives in pg_cron's database, runs in the application's, as the deployer.
    let cron = url.with_dbname("postgres").connect().await.unwrap();
    let job = cron
        .query_one(
            "SELECT database, username, command FROM cron.job WHERE command = 'CALL auth.run_token_cleanup()'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        (
            job.get::<_, &str>(0),
            job.get::<_, &str>(1),
            job.get::<_, &str>(2)
        ),
        ("app", "deployer", "CALL auth.run_token_cleanup()")
    );

    let status: String = poll(
        "pg_cron to run the job in the app database",
        Duration::from_secs(150),
        || async {
            app.query_opt(
                "SELECT status FROM auth.cleanup_runs
                 WHERE started_at >= $1 AND status <> 'running' ORDER BY started_at LIMIT 1",
                &[&started],
            )
            .await
            .unwrap()
            .map(|r| r.get(0))
        },
    )
    .await;
    assert_eq!(status, "ok");
    // pg_cron records the run as finished a moment after the procedure's last COMMIT.
    poll(
        "pg_cron to record the run",
        Duration::from_secs(30),
        || async {
            cron.query_opt(
                "SELECT 1 FROM cron.job_run_details d JOIN cron.job j USING (jobid)
                 WHERE j.command = 'CALL auth.run_token_cleanup()' AND d.status = 'succeeded'
                   AND d.start_time >= $1",
                &[&started],
            )
            .await
            .unwrap()
        },
    )
    .await;

    let out = run_cli(&["verify", "--schedule", "* * * * *"], &managed()).await;
    let report = stdout(&out);
    assert!(out.status.success(), "{report}{}", stderr(&out));
    for check in [
        "PASS pg_cron       extension 1.4-1 installed in 'postgres'",
        "PASS job ",
        "PASS last-job-run",
        "PASS recent-run",
    ] {
        assert!(report.contains(check), "{check} missing from\n{report}");
    }

    let out = run_cli(&["status", "--json"], &managed()).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["job"]["schedule"], "* * * * *");
    assert!(!status["runs"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused_naming_it() {
    let other_ca = managed_with("/ca.crt", "/other-ca.crt");
    let err = refused_connection(&other_ca).await;
    assert!(
        matches!(
            err,
            Error::Connect {
                failure: ConnectFailure::UntrustedCertificate { .. },
                ..
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("is not signed by a trusted CA (sslrootcert"),
        "{err}"
    );
    // With a root certificate, require checks the chain too, as in libpq.
    let require = other_ca.replace("sslmode=verify-full", "sslmode=require");
    assert!(matches!(
        refused_connection(&require).await,
        Error::Connect {
            failure: ConnectFailure::UntrustedCertificate { .. },
            ..
        }
    ));

    let out = run_cli(&["migrate"], &other_ca).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("not signed by a trusted CA"));
    assert!(!stderr(&out).contains(&password()));

    // TokenStore's pool: TLS with the right CA, the cause named with the wrong one.
    let pool = DatabaseUrl::parse(&managed()).unwrap().pool(2);
    assert_encrypted(&pool.get().await.unwrap()).await;
    let err = Error::from(
        DatabaseUrl::parse(&other_ca)
            .unwrap()
            .pool(1)
            .get()
            .await
            .unwrap_err(),
    );
    assert!(
        err.to_string().contains("not signed by a trusted CA"),
        "{err}"
    );
}

#[tokio::test]
async fn a_host_name_the_certificate_does_not_name_is_refused_by_verify_full_only() {
    let elsewhere = format!(
        "{}&hostaddr=127.0.0.1",
        managed_with("@localhost:", "@tj-not-in-cert.invalid:")
    );
    let err = refused_connection(&elsewhere).await;
    assert!(
        matches!(&err, Error::Connect { failure: ConnectFailure::HostNameMismatch { host }, .. } if host == "tj-not-in-cert.invalid"),
        "{err}"
    );
    assert!(err.to_string().starts_with("host name mismatch"), "{err}");

    // verify-ca checks the chain, not the name; require without a root
    // certificate checks nothing (both as in libpq).
    let verify_ca = elsewhere.replace("sslmode=verify-full", "sslmode=verify-ca");
    DatabaseUrl::parse(&verify_ca)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let require = format!("{}?sslmode=require", managed().split('?').next().unwrap());
    let client = DatabaseUrl::parse(&require)
        .unwrap()
        .connect()
        .await
        .unwrap();
    assert_encrypted(&client).await;
}

#[tokio::test]
async fn sslmode_disable_against_a_tls_only_server_says_tls_is_required() {
    let err = refused_connection(&managed_with("sslmode=verify-full", "sslmode=disable")).await;
    assert!(
        matches!(
            err,
            Error::Connect {
                failure: ConnectFailure::TlsRequired { .. },
                ..
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string().contains("accepts only TLS connections"),
        "{err}"
    );
}

#[tokio::test]
async fn require_against_a_server_without_tls_says_so() {
    let plain = format!("{}?sslmode=require", cli_url(&server(), "postgres"));
    let err = DatabaseUrl::parse(&plain)
        .unwrap()
        .connect()
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Connect {
                failure: ConnectFailure::ServerWithoutTls { mode: "require" },
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn a_missing_root_certificate_file_is_named_when_the_url_is_parsed() {
    let err = DatabaseUrl::parse(&managed_with("/ca.crt", "/no-such-ca.crt")).unwrap_err();
    assert!(
        matches!(&err, Error::SslRootCert { path, .. } if path.ends_with("/no-such-ca.crt")),
        "{err}"
    );
    assert!(!err.to_string().contains(&password()));
}

#[tokio::test]
async fn a_role_without_the_cron_grants_is_refused_before_anything_changes() {
    let deployer = DatabaseUrl::parse(&managed())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let role = format!("tj_nogrant_{}", uuid::Uuid::new_v4().simple());
    deployer
        .batch_execute(&format!("CREATE ROLE {role} LOGIN PASSWORD '{role}'"))
        .await
        .unwrap();
    let url = DatabaseUrl::parse(&managed_with(
        &format!("deployer:{}@", password()),
        &format!("{role}:{role}@"),
    ))
    .unwrap();
    let (client, err) = refused_migrate(&url).await;
    assert!(
        matches!(&err, token_janitor::operator::Error::PgCronNoPermission { role: r, database, missing }
            if r == &role && database == "postgres" && missing == "no USAGE on schema cron"),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("GRANT EXECUTE ON FUNCTION cron.schedule_in_database"),
        "{err}"
    );
    let owned: i64 = client
        .query_one(
            "SELECT (SELECT count(*) FROM pg_class WHERE relowner = current_user::regrole)
                  + (SELECT count(*) FROM pg_namespace WHERE nspowner = current_user::regrole)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(owned, 0, "a refused migrate creates nothing");
    drop(client);
    deployer
        .batch_execute(&format!("DROP ROLE {role}"))
        .await
        .unwrap();
}

/// libpq's rule: `sslmode=require` with no `sslrootcert` but a
/// `~/.postgresql/root.crt` verifies the chain as verify-ca does. Before, it
/// accepted any certificate there.
#[tokio::test]
async fn require_checks_the_chain_against_the_default_root_certificate() {
    let url = managed();
    let ca = url
        .split("sslrootcert=")
        .nth(1)
        .and_then(|rest| rest.split('&').next())
        .expect("the managed URL names its CA")
        .to_string();
    let require = url
        .replace(&format!("sslrootcert={ca}"), "")
        .replace("sslmode=verify-full", "sslmode=require")
        .replace("?&", "?")
        .replace("&&", "&")
        .trim_end_matches(['&', '?'])
        .to_string();
    assert!(!require.contains("sslrootcert"), "{require}");
    for (root, trusted) in [
        (ca.replace("/ca.crt", "/other-ca.crt"), false),
        (ca.clone(), true),
    ] {
        let home = std::env::temp_dir().join(format!("tj-home-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(home.join(".postgresql")).unwrap();
        std::fs::copy(&root, home.join(".postgresql/root.crt")).unwrap();
        let out = tokio::process::Command::new(BIN)
            .args(["status", "--json"])
            .env("DATABASE_URL", &require)
            .env("HOME", &home)
            .output()
            .await
            .unwrap();
        std::fs::remove_dir_all(&home).unwrap();
        // The server's own CA lets status connect (whatever it then finds
        // installed); the other CA is refused at the handshake.
        let refused = stderr(&out).contains("not signed by a trusted CA");
        assert_eq!(refused, !trusted, "root.crt {root}: {}", stderr(&out));
        assert!(!stderr(&out).contains(&password()));
    }
}
