//! Connections: the one place that parses a database URL, opens a client and
//! builds a pool.

use std::str::FromStr;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::{Client, Config, NoTls};

use crate::error::{Error, Result, describe};

/// A parsed database URL. Its `Display` never shows the password.
#[derive(Clone)]
pub struct DatabaseUrl {
    config: Config,
}

impl DatabaseUrl {
    /// Parses a `postgres://` URL or a `key=value` connection string.
    ///
    /// # Errors
    /// [`Error::InvalidUrl`] when the driver cannot parse it.
    pub fn parse(url: &str) -> Result<Self> {
        let mut config = Config::from_str(url).map_err(|err| Error::InvalidUrl {
            reason: describe(&err),
        })?;
        if config.get_application_name().is_none() {
            config.application_name("token-janitor");
        }
        Ok(Self { config })
    }

    /// The driver configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The database name (the user name when the URL names none, as libpq does).
    pub fn dbname(&self) -> String {
        self.config
            .get_dbname()
            .or(self.config.get_user())
            .unwrap_or("postgres")
            .to_string()
    }

    /// Host and port the URL points at, as `host:port`.
    pub fn target(&self) -> String {
        let host = match self.config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
            Some(tokio_postgres::config::Host::Unix(path)) => path.display().to_string(),
            None => "localhost".to_string(),
        };
        let port = self.config.get_ports().first().copied().unwrap_or(5432);
        format!("{host}:{port}")
    }

    /// This URL with another database name, for tools that create their own databases.
    pub fn with_dbname(&self, dbname: &str) -> Self {
        let mut config = self.config.clone();
        config.dbname(dbname);
        Self { config }
    }

    /// Opens one connection; its I/O runs on a spawned task.
    ///
    /// # Errors
    /// [`Error::Connect`] naming host, port and database.
    pub async fn connect(&self) -> Result<Client> {
        let (client, connection) =
            self.config
                .connect(NoTls)
                .await
                .map_err(|err| Error::Connect {
                    target: self.to_string(),
                    message: describe(&err),
                })?;
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(error = %describe(&err), "database connection closed");
            }
        });
        Ok(client)
    }

    /// A pool of up to `max_size` connections. Creating it touches no network:
    /// the first `get()` connects and reports a wrong URL.
    pub fn pool(&self, max_size: usize) -> Pool {
        let manager = Manager::from_config(
            self.config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        Pool::builder(manager)
            .max_size(max_size)
            .build()
            .expect("a pool without a runtime-dependent timeout always builds")
    }
}

impl std::fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.target(), self.dbname())
    }
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DatabaseUrl({self})")
    }
}
