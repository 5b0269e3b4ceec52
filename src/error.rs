//! The runtime error ([`Error`]) and the helpers that build it from the
//! driver's.

/// What can go wrong in the runtime part of token-janitor: a database URL,
/// a connection, a [`TokenStore`](crate::TokenStore) call, a presented
/// token. Each message names what failed and what to do about it. Deploying
/// ([`operator`](crate::operator)) has its own error, which wraps this one.
///
/// ```
/// use token_janitor::{DatabaseUrl, Error};
///
/// let err = DatabaseUrl::parse("postgres://app@localhost:not-a-port/app").unwrap_err();
/// assert!(matches!(err, Error::InvalidUrl { .. }), "{err}");
/// assert!(err.to_string().contains("expected postgres://"), "{err}");
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The database URL could not be parsed.
    #[error(
        "invalid database URL ({reason}): expected postgres://user[:password]@host[:port]/database"
    )]
    InvalidUrl {
        /// What the parser said.
        reason: String,
    },

    /// The CA file named by sslrootcert cannot be used.
    #[error(
        "cannot use sslrootcert '{path}': {reason}; download your provider's CA bundle and set \
         sslrootcert=<path> in the URL (verify-ca and verify-full need one)"
    )]
    SslRootCert {
        /// The file (libpq's default ~/.postgresql/root.crt when none was given).
        path: String,
        /// Why it cannot be used.
        reason: String,
    },

    /// No connection could be opened to the server; `failure` says why.
    #[error("{}", .failure.message(.target))]
    Connect {
        /// host:port/database, never the password.
        target: String,
        /// Why.
        failure: ConnectFailure,
    },

    /// A [`crate::TokenStore`] call took longer than its statement timeout;
    /// its query was cancelled on the server.
    #[error(
        "{call} did not finish within the statement timeout ({timeout:?}) and was cancelled: \
         look for locks or load on the server, or raise TokenStore::with_statement_timeout"
    )]
    StatementTimeout {
        /// The SQL function called.
        call: &'static str,
        /// The store's statement timeout.
        timeout: std::time::Duration,
    },

    /// A schema name token-janitor will not install into.
    #[error(
        "invalid schema name '{name}': {reason}; a schema (MigrateOptions::schema) takes {rule}",
        rule = crate::schema::SCHEMA_NAME_RULE
    )]
    InvalidSchema {
        /// The name as given.
        name: String,
        /// Why it was refused.
        reason: String,
    },

    /// A statement failed. The driver's error is its `source()`;
    /// [`Error::sqlstate`] gives the server's SQLSTATE.
    #[error("{context}: {message}")]
    Db {
        /// What we were doing.
        context: String,
        /// The server's message, with detail and hint.
        message: String,
        /// The driver's error.
        #[source]
        source: tokio_postgres::Error,
    },

    /// No pooled connection could be had. The pool's error is its `source()`.
    #[error(
        "cannot get a database connection from the pool: {message}; check that the server is \
         running and that the URL the pool was built from is right"
    )]
    Pool {
        /// What went wrong, with the server's message or the TLS cause.
        message: String,
        /// The pool's error.
        #[source]
        source: deadpool_postgres::PoolError,
    },

    /// A refresh token string that is not one of ours.
    #[error("malformed refresh token: {0}")]
    MalformedToken(&'static str),

    /// The database answered something this library does not know, e.g. a
    /// rotate outcome of a newer schema.
    #[error(
        "unexpected answer from the database: {0}; the schema and this library may be of \
         different releases: run token-janitor migrate with this release"
    )]
    UnexpectedResponse(String),
}

/// Why a connection could not be opened ([`Error::Connect`]).
///
/// ```
/// use token_janitor::{ConnectFailure, Error};
///
/// /// Whether trying again later may help.
/// fn transient(err: &Error) -> bool {
///     matches!(
///         err,
///         Error::Connect { failure: ConnectFailure::Failed { .. } | ConnectFailure::Timeout { .. }, .. }
///             | Error::Pool { .. }
///             | Error::StatementTimeout { .. }
///     )
/// }
/// # assert!(!transient(&Error::MalformedToken("empty")));
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum ConnectFailure {
    /// The server refused or dropped the connection, or the login failed.
    Failed {
        /// The driver's description of the failure.
        message: String,
    },
    /// The server did not complete a connection within the connect timeout.
    Timeout {
        /// The URL's connect_timeout, or the default 10 s.
        timeout: std::time::Duration,
    },
    /// The server's certificate does not chain to a trusted CA.
    UntrustedCertificate {
        /// Where the trusted CAs came from.
        roots: String,
    },
    /// The server's certificate is valid but not for the host connected to.
    HostNameMismatch {
        /// The host name in the URL.
        host: String,
    },
    /// TLS was required but the server does not offer it.
    ServerWithoutTls {
        /// The sslmode asked for.
        mode: &'static str,
    },
    /// The server accepts only TLS connections and sslmode=disable was asked.
    TlsRequired {
        /// The server's message.
        message: String,
    },
}

impl ConnectFailure {
    /// What failed at `target` and what to do about it.
    fn message(&self, target: &str) -> String {
        match self {
            Self::Failed { message } => format!(
                "cannot connect to PostgreSQL at {target}: {message}; check that the server is \
                 running there and that the database URL is right"
            ),
            Self::Timeout { timeout } => format!(
                "no answer from PostgreSQL at {target} within connect_timeout ({timeout:?}): \
                 check that the host and port are a PostgreSQL server's and that it is not \
                 overloaded, or raise connect_timeout (seconds) in the URL"
            ),
            Self::UntrustedCertificate { roots } => format!(
                "the server certificate at {target} is not signed by a trusted CA ({roots} does \
                 not hold the CA that signed it): point sslrootcert at your provider's CA bundle, \
                 or at the CA that signed the server's certificate"
            ),
            Self::HostNameMismatch { host } => format!(
                "host name mismatch: the server certificate at {target} is not valid for host \
                 '{host}': connect with a host name the certificate names, or use \
                 sslmode=verify-ca to check the CA only"
            ),
            Self::ServerWithoutTls { mode } => format!(
                "the server at {target} does not support TLS, which sslmode={mode} requires: \
                 enable ssl on the server, or use sslmode=prefer or disable for a server you \
                 reach over a trusted network"
            ),
            Self::TlsRequired { message } => format!(
                "the server at {target} accepts only TLS connections and the URL has \
                 sslmode=disable ({message}): use sslmode=verify-full with \
                 sslrootcert=<your provider's CA file>"
            ),
        }
    }
}

impl From<deadpool_postgres::PoolError> for Error {
    fn from(err: deadpool_postgres::PoolError) -> Self {
        use deadpool_postgres::{PoolError, TimeoutType};
        let message = match &err {
            PoolError::Backend(backend) => describe(backend),
            PoolError::Timeout(step) => format!(
                "the pool's {} timeout (DatabaseUrl::pool sets the URL's connect_timeout, 10 s \
                 when it has none) expired while {}",
                match step {
                    TimeoutType::Wait => "wait",
                    TimeoutType::Create => "create",
                    TimeoutType::Recycle => "recycle",
                },
                match step {
                    TimeoutType::Wait => "waiting for a free connection (raise the pool's size)",
                    TimeoutType::Create => "opening a connection",
                    TimeoutType::Recycle => "checking an idle connection",
                }
            ),
            other => other.to_string(),
        };
        Error::Pool {
            message,
            source: err,
        }
    }
}

impl Error {
    /// The SQLSTATE of the server error behind this one, if a server error
    /// is behind it (e.g. `22023` for an argument `auth` refused).
    ///
    /// ```
    /// use token_janitor::tokio_postgres::error::SqlState;
    ///
    /// # async fn sign_in(store: token_janitor::TokenStore) -> token_janitor::Result<()> {
    /// match store.issue("").await {
    ///     // auth.issue_token refuses an empty user id as invalid_parameter_value.
    ///     Err(err) if err.sqlstate() == Some(&SqlState::INVALID_PARAMETER_VALUE) => println!("{err}"),
    ///     other => drop(other?),
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn sqlstate(&self) -> Option<&tokio_postgres::error::SqlState> {
        match self {
            Error::Db { source, .. } => source.code(),
            Error::Pool {
                source: deadpool_postgres::PoolError::Backend(backend),
                ..
            } => backend.code(),
            _ => None,
        }
    }
}

/// Result with [`Error`].
///
/// ```
/// use token_janitor::{RefreshToken, Result};
///
/// fn session_of(presented: &str) -> Result<uuid::Uuid> {
///     Ok(RefreshToken::parse(presented)?.session_id())
/// }
/// assert!(session_of("rt9_nope").is_err());
/// ```
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The certificate error rustls raised during the handshake, if that is why
/// a connection failed. The driver wraps it in an `io::Error`, whose
/// `source()` skips the wrapped error, hence `get_ref`.
pub(crate) fn certificate_error(err: &tokio_postgres::Error) -> Option<rustls::CertificateError> {
    let mut next: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(err);
    while let Some(cause) = next {
        let inner = cause
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .map(|inner| inner as &(dyn std::error::Error + 'static))
            .unwrap_or(cause);
        if let Some(rustls::Error::InvalidCertificate(cert)) = inner.downcast_ref::<rustls::Error>()
        {
            return Some(cert.clone());
        }
        next = cause.source();
    }
    None
}

/// Describes a driver error with the server's message, detail and hint, which
/// the driver's own `Display` leaves out, and a refused server certificate in
/// words (for errors that reach us without the URL, such as a pool's).
pub fn describe(err: &tokio_postgres::Error) -> String {
    if let Some(cause) = certificate_error(err) {
        use rustls::CertificateError as Cert;
        let what = match cause {
            Cert::UnknownIssuer | Cert::BadSignature => {
                "it is not signed by a trusted CA (check sslrootcert)"
            }
            Cert::NotValidForName | Cert::NotValidForNameContext { .. } => {
                "host name mismatch: it does not name the host in the URL"
            }
            Cert::Expired | Cert::ExpiredContext { .. } => "it has expired",
            Cert::NotValidYet | Cert::NotValidYetContext { .. } => "it is not valid yet",
            _ => "it failed verification",
        };
        return format!("the server's TLS certificate was refused: {what} ({cause:?})");
    }
    if let Some(db) = err.as_db_error() {
        let mut text = format!("{} ({})", db.message(), db.code().code());
        if let Some(detail) = db.detail() {
            text.push_str(&format!("; {detail}"));
        }
        if let Some(hint) = db.hint() {
            text.push_str(&format!("; hint: {hint}"));
        }
        return text;
    }
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

/// Wraps a driver error with what we were doing: `.map_err(db("applying sql/x"))`.
pub fn db(context: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> Error {
    let context = context.into();
    move |err| Error::Db {
        context,
        message: describe(&err),
        source: err,
    }
}
