//! Installing the schema: migrate options for the usual cases, a refused
//! migrate, and an older release's schema to upgrade from.

use token_janitor::DatabaseUrl;
pub use token_janitor::operator::ScheduleChoice;
use token_janitor::operator::{MigrateOptions, migrate};
use tokio_postgres::Client;

/// Migrate options for a database without pg_cron.
pub fn no_schedule() -> MigrateOptions {
    MigrateOptions {
        schedule: ScheduleChoice::Off,
        ..MigrateOptions::default()
    }
}

/// Migrate options that reach pg_cron's database from `url` as the command
/// line does, when it is another one.
pub fn reaching_cron(url: &DatabaseUrl) -> MigrateOptions {
    MigrateOptions {
        cron_database: Some(token_janitor::operator::CronDatabase::Like(url.clone())),
        ..MigrateOptions::default()
    }
}

/// Migrates as `url`'s role, reaching pg_cron's database; the migrate must
/// be refused. Returns the connection (to check that nothing changed) and the
/// error.
pub async fn refused_migrate(url: &DatabaseUrl) -> (Client, token_janitor::operator::Error) {
    let mut client = url.connect().await.unwrap();
    let err = migrate(&mut client, &reaching_cron(url))
        .await
        .expect_err("migrate must be refused");
    (client, err)
}

/// Applies the versioned migrations of this checkout up to `version` only,
/// as an older release would have left the database (no sql/ definitions,
/// the history in public.refinery_schema_history): the starting point of
/// upgrade tests.
pub async fn migrate_to(client: &mut Client, version: i32) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    files.sort();
    let migrations: Vec<refinery::Migration> = files
        .iter()
        .map(|path| {
            let name = path.file_stem().unwrap().to_str().unwrap();
            refinery::Migration::unapplied(name, &std::fs::read_to_string(path).unwrap()).unwrap()
        })
        .collect();
    refinery::Runner::new(&migrations)
        .set_target(refinery::Target::Version(version))
        .set_migration_table_name(token_janitor::testing::LEGACY_TABLE)
        .run_async(client)
        .await
        .unwrap();
}
