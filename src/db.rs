//! Connections: the one place that parses a database URL, opens a client and
//! builds a pool, with TLS as libpq's `sslmode` and `sslrootcert` ask.
//!
//! TLS goes through rustls (tokio-postgres-rustls): its certificate errors are
//! typed, so "untrusted certificate" and "host name mismatch" are told apart
//! without matching OpenSSL's message strings, and it needs no system OpenSSL
//! headers to build. tokio-postgres's own parser knows `sslmode` only up to
//! `require` and no `sslrootcert`, so [`DatabaseUrl::parse`] takes both out of
//! the URL and verifies the certificate itself.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ClientConfig, WebPkiServerVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres::config::SslMode as DriverSslMode;
use tokio_postgres::{Client, Config};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::error::{ConnectFailure, Error, Result, certificate_error, describe};

/// A connection [`DatabaseUrl::open`] opened, whose I/O its caller drives.
pub(crate) type Connection = tokio_postgres::Connection<
    tokio_postgres::Socket,
    <MakeRustlsConnect as tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket>>::Stream,
>;

/// libpq's `sslmode`: whether to use TLS and what to check of the server's
/// certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// No TLS.
    Disable,
    /// TLS when the server offers it, else plain (libpq's default).
    Prefer,
    /// TLS or no connection; the certificate is checked only when there is a
    /// root certificate file, an `sslrootcert` or `~/.postgresql/root.crt`
    /// (then as `verify-ca`, as libpq does).
    Require,
    /// TLS, and the certificate must chain to a CA in `sslrootcert`.
    VerifyCa,
    /// As `verify-ca`, and the certificate must name the host connected to.
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Result<Self> {
        Ok(match value {
            "disable" => Self::Disable,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            "allow" => {
                return Err(invalid_url(
                    "sslmode=allow is not supported: use prefer, require or verify-full",
                ));
            }
            other => {
                return Err(invalid_url(&format!(
                    "unknown sslmode '{other}': use disable, prefer, require, verify-ca or verify-full"
                )));
            }
        })
    }

    /// The name libpq uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }
}

/// What the client checks of the server's certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verification {
    /// Nothing: encryption without authentication (libpq's prefer/require
    /// without a root certificate).
    None,
    /// The chain, not the host name.
    Chain,
    /// The chain and the host name.
    Full,
}

/// TLS settings taken from the URL.
#[derive(Clone)]
struct Tls {
    mode: SslMode,
    /// The `sslrootcert` value as given (a path, or `system`).
    root_cert: Option<String>,
    connector: MakeRustlsConnect,
}

/// The startup `options` every connection token-janitor opens carries, after
/// any the URL gives: its search_path holds only `pg_catalog` and the
/// session's own `pg_temp`, so no name token-janitor runs resolves in a
/// schema another role can write (`public` belongs to the database owner),
/// from the first statement on. A startup option outranks the database's and
/// the role's settings (`ALTER DATABASE … SET search_path`), and the last
/// `-c` of a name wins over one the URL gave.
pub const PINNED_OPTIONS: &str = "-c search_path=pg_catalog,pg_temp";

/// The connect timeout when the URL sets no `connect_timeout` (libpq's
/// default is to wait forever).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A parsed database URL. Its `Display` never shows the password.
///
/// ```
/// use token_janitor::DatabaseUrl;
///
/// let url = DatabaseUrl::parse("postgres://app:s3cret@db.internal:6432/app?sslmode=verify-full&sslrootcert=system")?;
/// assert_eq!(url.to_string(), "db.internal:6432/app"); // never the password
/// # Ok::<(), token_janitor::Error>(())
/// ```
#[derive(Clone)]
pub struct DatabaseUrl {
    config: Config,
    tls: Tls,
}

impl DatabaseUrl {
    /// Parses a `postgres://` URL or a `key=value` connection string,
    /// including libpq's `sslmode` (disable, prefer — the default —, require,
    /// verify-ca, verify-full) and `sslrootcert` (a PEM file of CA
    /// certificates, or `system` for the platform's store). Without
    /// `sslrootcert`, verify-ca and verify-full read `~/.postgresql/root.crt`
    /// as libpq does; with one, `require` checks the chain like verify-ca.
    ///
    /// # Errors
    /// [`Error::InvalidUrl`] when the URL cannot be parsed or combines
    /// settings libpq refuses; [`Error::SslRootCert`] when the CA file is
    /// missing, unreadable or holds no certificate.
    ///
    /// ```
    /// use token_janitor::DatabaseUrl;
    ///
    /// let url = DatabaseUrl::parse("host=/run/postgresql dbname=app user=app")?;
    /// assert_eq!(url.dbname(), "app");
    /// # Ok::<(), token_janitor::Error>(())
    /// ```
    pub fn parse(url: &str) -> Result<Self> {
        let (driver_url, mode, root_cert) = split_tls_params(url)?;
        let mut config = Config::from_str(&driver_url).map_err(|err| Error::InvalidUrl {
            reason: describe(&err),
        })?;
        if config.get_application_name().is_none() {
            config.application_name("token-janitor");
        }
        let options = match config.get_options() {
            Some(given) if !given.trim().is_empty() => format!("{given} {PINNED_OPTIONS}"),
            _ => PINNED_OPTIONS.to_string(),
        };
        config.options(options);
        let mode = mode.unwrap_or(SslMode::Prefer);
        config.ssl_mode(match mode {
            SslMode::Disable => DriverSslMode::Disable,
            SslMode::Prefer => DriverSslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => DriverSslMode::Require,
        });
        let tls = Tls::new(mode, root_cert)?;
        Ok(Self { config, tls })
    }

    /// The driver configuration.
    ///
    /// ```
    /// use token_janitor::DatabaseUrl;
    ///
    /// let url = DatabaseUrl::parse("postgres://app@localhost/app")?;
    /// assert_eq!(url.config().get_user(), Some("app"));
    /// # Ok::<(), token_janitor::Error>(())
    /// ```
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The database name (the user name when the URL names none, as libpq does).
    ///
    /// ```
    /// use token_janitor::DatabaseUrl;
    ///
    /// assert_eq!(DatabaseUrl::parse("postgres://app@localhost")?.dbname(), "app");
    /// # Ok::<(), token_janitor::Error>(())
    /// ```
    pub fn dbname(&self) -> String {
        self.config
            .get_dbname()
            .or(self.config.get_user())
            .unwrap_or("postgres")
            .to_string()
    }

    /// Host and port the URL points at, as `host:port`.
    ///
    /// ```
    /// use token_janitor::DatabaseUrl;
    ///
    /// assert_eq!(DatabaseUrl::parse("postgres://app@localhost/app")?.target(), "localhost:5432");
    /// # Ok::<(), token_janitor::Error>(())
    /// ```
    pub fn target(&self) -> String {
        let port = self.config.get_ports().first().copied().unwrap_or(5432);
        format!("{}:{port}", self.host())
    }

    fn host(&self) -> String {
        match self.config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
            Some(tokio_postgres::config::Host::Unix(path)) => path.display().to_string(),
            None => "localhost".to_string(),
        }
    }

    /// This URL with another database name: the same server, role and TLS
    /// settings.
    ///
    /// ```
    /// use token_janitor::DatabaseUrl;
    /// use token_janitor::operator::CronDatabase;
    ///
    /// let app = DatabaseUrl::parse("postgres://deployer@db.internal/app?sslmode=require")?;
    /// // pg_cron's database on the same server, as the same role, over TLS too.
    /// let cron = CronDatabase::At(app.with_dbname("postgres"));
    /// # drop(cron);
    /// # Ok::<(), token_janitor::Error>(())
    /// ```
    pub fn with_dbname(&self, dbname: &str) -> Self {
        let mut config = self.config.clone();
        config.dbname(dbname);
        Self {
            config,
            tls: self.tls.clone(),
        }
    }

    /// How long opening a connection may take, TCP, TLS and authentication
    /// together, as libpq's `connect_timeout`: the URL's, else
    /// [`DEFAULT_CONNECT_TIMEOUT`]. (The driver applies the URL's to the TCP
    /// connect alone, so a server that accepts and never answers would hang.)
    pub(crate) fn connect_timeout(&self) -> Duration {
        self.config
            .get_connect_timeout()
            .copied()
            .unwrap_or(DEFAULT_CONNECT_TIMEOUT)
    }

    /// Opens one connection within the URL's `connect_timeout` (10 s when it
    /// sets none; TCP, TLS and authentication together); its I/O
    /// runs on a spawned task.
    ///
    /// # Errors
    /// [`Error::Connect`] naming host, port and database, with the
    /// [`ConnectFailure`]: [`ConnectFailure::Timeout`] when the server does
    /// not complete the connection in time;
    /// [`ConnectFailure::UntrustedCertificate`],
    /// [`ConnectFailure::HostNameMismatch`],
    /// [`ConnectFailure::ServerWithoutTls`] or [`ConnectFailure::TlsRequired`]
    /// when TLS is the cause; [`ConnectFailure::Failed`] otherwise.
    ///
    /// ```no_run
    /// use token_janitor::DatabaseUrl;
    ///
    /// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
    /// let client = DatabaseUrl::parse("postgres://app@localhost/app")?.connect().await?;
    /// let row = client.query_one("SELECT current_user", &[]).await?;
    /// println!("connected as {}", row.get::<_, String>(0));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn connect(&self) -> Result<Client> {
        let (client, connection) = self.open().await?;
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(error = %describe(&err), "database connection closed");
            }
        });
        Ok(client)
    }

    /// Opens one connection as [`DatabaseUrl::connect`] does, leaving its
    /// I/O to the caller: a listener reads notifications from it
    /// (`Connection::poll_message`), which a spawned connection drops.
    pub(crate) async fn open(&self) -> Result<(Client, Connection)> {
        let timeout = self.connect_timeout();
        tokio::time::timeout(timeout, self.config.connect(self.tls.connector.clone()))
            .await
            .map_err(|_| Error::Connect {
                target: self.to_string(),
                failure: ConnectFailure::Timeout { timeout },
            })?
            .map_err(|err| self.connect_error(&err))
    }

    /// Names the cause of a failed connection: the TLS checks first, since
    /// the driver's own text ("error performing TLS handshake: invalid peer
    /// certificate: UnknownIssuer") says little to someone who set a URL.
    fn connect_error(&self, err: &tokio_postgres::Error) -> Error {
        Error::Connect {
            target: self.to_string(),
            failure: self.connect_failure(err),
        }
    }

    fn connect_failure(&self, err: &tokio_postgres::Error) -> ConnectFailure {
        let message = describe(err);
        match certificate_error(err) {
            Some(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            ) => {
                return ConnectFailure::HostNameMismatch { host: self.host() };
            }
            Some(CertificateError::UnknownIssuer | CertificateError::BadSignature) => {
                return ConnectFailure::UntrustedCertificate {
                    roots: self.tls.roots_description(),
                };
            }
            Some(_) => return ConnectFailure::Failed { message },
            None => {}
        }
        if message.contains("server does not support TLS") {
            return ConnectFailure::ServerWithoutTls {
                mode: self.tls.mode.as_str(),
            };
        }
        if self.tls.mode == SslMode::Disable
            && err.as_db_error().is_some_and(|db| {
                db.code() == &tokio_postgres::error::SqlState::INVALID_AUTHORIZATION_SPECIFICATION
                    && db.message().contains("no encryption")
            })
        {
            return ConnectFailure::TlsRequired { message };
        }
        ConnectFailure::Failed { message }
    }

    /// A pool of up to `max_size` connections with this URL's TLS settings.
    /// Creating it touches no network: the first `get()` connects and
    /// reports a wrong URL. A `get()` gives up after
    /// the URL's `connect_timeout` (10 s when the URL sets none) at each
    /// step: waiting for a free connection (deadpool's `wait` timeout),
    /// opening one (`create`) and checking an idle one (`recycle`); the
    /// error says which. Build the pool inside a Tokio runtime's context
    /// (deadpool's timeouts run on it).
    ///
    /// ```
    /// use token_janitor::{DatabaseUrl, TokenStore};
    ///
    /// # async fn example() -> token_janitor::Result<()> {
    /// // One pool for the application's queries and the store's calls.
    /// let pool = DatabaseUrl::parse("postgres://app@localhost/app?connect_timeout=3")?.pool(16);
    /// let store = TokenStore::new(pool.clone());
    /// let client = pool.get().await?; // the application's own queries
    /// # drop((store, client));
    /// # Ok(())
    /// # }
    /// ```
    pub fn pool(&self, max_size: usize) -> Pool {
        let timeout = Some(self.connect_timeout());
        let manager = Manager::from_config(
            self.config.clone(),
            self.tls.connector.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        Pool::builder(manager)
            .max_size(max_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(timeout)
            .create_timeout(timeout)
            .recycle_timeout(timeout)
            .build()
            .expect("a pool with a runtime for its timeouts always builds")
    }
}

/// TLS for a cancel request (tokio-postgres' `CancelToken`): encrypted when
/// the connection's sslmode asks for it, the certificate not checked. A
/// cancel request carries only the backend's process id and cancel key, for
/// a connection token-janitor closes right after (libpq before PostgreSQL 17
/// sends it unencrypted).
pub(crate) fn cancel_tls() -> Result<MakeRustlsConnect> {
    Ok(Tls::new(SslMode::Require, None)?.connector)
}

/// Pins the session's search_path to `pg_catalog, pg_temp` for token-janitor's
/// own queries on a client it did not open (an application's connection given
/// to [`crate::migrate()`] or [`crate::status::status`]); connections from
/// [`DatabaseUrl`] carry the same pin from their start ([`PINNED_OPTIONS`]).
/// Every name token-janitor runs is then found in `pg_catalog` or named with
/// its schema: nothing a database owner plants in `public` or puts first on
/// the database's path (a domain `text`, a function `unnest(text[])`, an
/// operator) runs in a superuser's migrate, verify or status. Returns the
/// path the session had, for [`restore_search_path`].
///
/// # Errors
/// [`Error::Db`] when the setting cannot be read or set.
pub async fn pin_search_path(client: &Client) -> Result<String> {
    let previous: String = client
        .query_one("SELECT pg_catalog.current_setting('search_path')", &[])
        .await
        .map_err(crate::error::db("reading the session's search_path"))?
        .get(0);
    client
        .batch_execute("SET search_path = pg_catalog, pg_temp")
        .await
        .map_err(crate::error::db("pinning the session's search_path"))?;
    Ok(previous)
}

/// Puts back the search_path [`pin_search_path`] returned.
///
/// # Errors
/// [`Error::Db`] when it cannot be set.
pub async fn restore_search_path(client: &Client, previous: &str) -> Result<()> {
    client
        .query_one(
            "SELECT pg_catalog.set_config('search_path', $1, false)",
            &[&previous],
        )
        .await
        .map_err(crate::error::db("restoring the session's search_path"))?;
    Ok(())
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

fn invalid_url(reason: &str) -> Error {
    Error::InvalidUrl {
        reason: reason.to_string(),
    }
}

/// Takes `sslmode` and `sslrootcert` out of a URL or key=value string, which
/// is then for tokio-postgres (with verify-ca/verify-full as `require`).
fn split_tls_params(url: &str) -> Result<(String, Option<SslMode>, Option<String>)> {
    let mut mode = None;
    let mut root_cert = None;
    let mut take = |key: &str, value: &str| -> Result<bool> {
        match key {
            "sslmode" => mode = Some(SslMode::parse(value)?),
            "sslrootcert" => root_cert = Some(value.to_string()),
            _ => return Ok(false),
        }
        Ok(true)
    };
    let rest = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            if !take(&percent_decode(key)?, &percent_decode(value)?)? {
                kept.push(pair);
            }
        }
        if kept.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", kept.join("&"))
        }
    } else {
        let mut kept = Vec::new();
        for (key, value) in key_values(url)? {
            if !take(&key, &value)? {
                kept.push(format!(
                    "{key}='{}'",
                    value.replace('\\', "\\\\").replace('\'', "\\'")
                ));
            }
        }
        kept.join(" ")
    };
    Ok((rest, mode, root_cert))
}

fn percent_decode(text: &str) -> Result<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| {
                    // Not the text itself: it may be a password.
                    invalid_url("bad percent-encoding in a URL parameter (a % not followed by two hex digits)")
                })?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| invalid_url("a URL parameter is not UTF-8"))
}

/// libpq's `key = value` pairs; values may be single-quoted, and a backslash
/// escapes the next character.
fn key_values(text: &str) -> Result<Vec<(String, String)>> {
    let mut pairs = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(pairs);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(invalid_url(&format!("missing '=' after '{key}'")));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        let quoted = chars.next_if_eq(&'\'').is_some();
        loop {
            match chars.next() {
                Some('\\') => value.extend(chars.next()),
                Some('\'') if quoted => break,
                Some(c) if quoted || !c.is_whitespace() => value.push(c),
                Some(_) => break,
                None if quoted => {
                    return Err(invalid_url(&format!("unterminated quote in '{key}'")));
                }
                None => break,
            }
        }
        pairs.push((key, value));
    }
}

impl Tls {
    fn new(mode: SslMode, root_cert: Option<String>) -> Result<Self> {
        if root_cert.as_deref() == Some("system") && mode != SslMode::VerifyFull {
            return Err(invalid_url(&format!(
                "sslrootcert=system needs sslmode=verify-full (it is {}), as in libpq",
                mode.as_str()
            )));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        // libpq: with sslmode=require and a root certificate file (given, or
        // ~/.postgresql/root.crt present), require verifies as verify-ca.
        let default_roots = root_cert.is_none() && root_path(None).is_file();
        let verification = match (mode, &root_cert) {
            (SslMode::VerifyFull, _) => Verification::Full,
            (SslMode::VerifyCa, _) | (SslMode::Prefer | SslMode::Require, Some(_)) => {
                Verification::Chain
            }
            (SslMode::Require, None) if default_roots => Verification::Chain,
            (SslMode::Disable, _) | (SslMode::Prefer | SslMode::Require, None) => {
                Verification::None
            }
        };
        let chain = match verification {
            Verification::None => None,
            Verification::Chain | Verification::Full => {
                let roots = load_roots(root_cert.as_deref())?;
                let webpki =
                    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                        .build()
                        .map_err(|err| Error::SslRootCert {
                            path: root_path(root_cert.as_deref()).display().to_string(),
                            reason: err.to_string(),
                        })?;
                Some(webpki)
            }
        };
        let verifier = Arc::new(CertificateCheck {
            chain,
            check_name: verification == Verification::Full,
            algorithms: provider.signature_verification_algorithms,
        });
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default TLS versions")
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        Ok(Self {
            mode,
            root_cert,
            connector: MakeRustlsConnect::new(config),
        })
    }

    /// Where the trusted CAs came from, for error messages.
    fn roots_description(&self) -> String {
        match self.root_cert.as_deref() {
            Some("system") => "the system's trusted CAs (sslrootcert=system)".to_string(),
            other => format!("sslrootcert {}", root_path(other).display()),
        }
    }
}

/// The CA file: the one given, else libpq's default `~/.postgresql/root.crt`.
fn root_path(root_cert: Option<&str>) -> PathBuf {
    match root_cert {
        Some(path) => PathBuf::from(path),
        None => Path::new(&std::env::var("HOME").unwrap_or_default()).join(".postgresql/root.crt"),
    }
}

fn load_roots(root_cert: Option<&str>) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    if root_cert == Some("system") {
        let found = rustls_native_certs::load_native_certs();
        roots.add_parsable_certificates(found.certs);
        if roots.is_empty() {
            return Err(Error::SslRootCert {
                path: "system".to_string(),
                reason: "no trusted CA certificates found on this system (install ca-certificates)"
                    .to_string(),
            });
        }
        return Ok(roots);
    }
    let path = root_path(root_cert);
    let unreadable = |reason: String| Error::SslRootCert {
        path: path.display().to_string(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(&path)
        .map_err(|err| unreadable(err.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| unreadable(err.to_string()))?;
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(unreadable(
            "it holds no PEM certificate (BEGIN CERTIFICATE)".to_string(),
        ));
    }
    Ok(roots)
}

/// What the client checks of the server's certificate. Without a chain
/// verifier (libpq's prefer/require without a root certificate) any
/// certificate is accepted: encrypted, not authenticated. verify-ca checks the
/// chain only: webpki checks the name after the chain, so a name error means
/// the chain itself was good. The handshake signatures are always checked.
#[derive(Debug)]
struct CertificateCheck {
    chain: Option<Arc<WebPkiServerVerifier>>,
    check_name: bool,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for CertificateCheck {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.check_name => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_modes_and_root_cert_are_taken_out_of_urls() {
        let (rest, mode, root) = split_tls_params(
            "postgres://u:p%40ss@db:5432/app?sslmode=verify-full&sslrootcert=%2Ftmp%2Fca.pem&connect_timeout=5",
        )
        .unwrap();
        assert_eq!(rest, "postgres://u:p%40ss@db:5432/app?connect_timeout=5");
        assert_eq!(mode, Some(SslMode::VerifyFull));
        assert_eq!(root.as_deref(), Some("/tmp/ca.pem"));

        let (rest, mode, root) = split_tls_params(
            r"host=db user=u password='it\'s' sslmode = verify-ca sslrootcert='/a b/ca.pem'",
        )
        .unwrap();
        assert_eq!(rest, r"host='db' user='u' password='it\'s'");
        assert_eq!(mode, Some(SslMode::VerifyCa));
        assert_eq!(root.as_deref(), Some("/a b/ca.pem"));
    }

    #[test]
    fn no_error_shows_the_password() {
        let mut refused = 0;
        for url in [
            "postgres://u:s3cr%et@db/app?sslmode=nope",
            "postgres://u@db/app?password=s3cr%ZZet",
            "postgres://u:s3cret@db:notaport/app",
            "postgres://u:s3cret@db/app?connect_timeout=soon",
            "host=db password='s3cret",
            "host=db password=s3cret port=x",
        ] {
            let Err(err) = DatabaseUrl::parse(url).map_err(|e| e.to_string()) else {
                continue;
            };
            assert!(!err.contains("s3cr"), "{url}: {err}");
            refused += 1;
        }
        assert!(refused >= 5, "{refused} of the URLs were refused");
    }

    #[test]
    fn settings_libpq_refuses_are_refused_by_name() {
        let reason = |url: &str| match DatabaseUrl::parse(url) {
            Err(Error::InvalidUrl { reason }) => reason,
            other => panic!("{url}: {other:?}"),
        };
        assert!(
            reason("postgres://u:secret@db/app?sslmode=verify")
                .contains("unknown sslmode 'verify'")
        );
        assert!(
            reason("postgres://u@db/app?sslmode=allow").contains("sslmode=allow is not supported")
        );
        assert!(
            reason("postgres://u@db/app?sslmode=require&sslrootcert=system")
                .contains("sslrootcert=system needs sslmode=verify-full")
        );
        assert!(reason("host=db sslmode='verify-full").contains("unterminated quote"));
        assert!(!reason("postgres://u:secret@db/app?sslmode=x").contains("secret"));
    }

    #[test]
    fn connect_timeout_is_the_urls_else_ten_seconds() {
        let url = DatabaseUrl::parse("postgres://u@db/app").unwrap();
        assert_eq!(url.connect_timeout(), Duration::from_secs(10));
        let url = DatabaseUrl::parse("postgres://u@db/app?connect_timeout=3").unwrap();
        assert_eq!(url.connect_timeout(), Duration::from_secs(3));
        assert_eq!(
            url.with_dbname("postgres").connect_timeout(),
            Duration::from_secs(3)
        );
    }

    #[test]
    fn the_default_is_prefer_and_database_urls_keep_their_tls_settings() {
        let url = DatabaseUrl::parse("postgres://u@db/app").unwrap();
        assert_eq!(url.tls.mode, SslMode::Prefer);
        let url = DatabaseUrl::parse("postgres://u@db/app?sslmode=require").unwrap();
        assert_eq!(url.with_dbname("postgres").tls.mode, SslMode::Require);
        assert_eq!(url.with_dbname("postgres").to_string(), "db:5432/postgres");
    }
}
