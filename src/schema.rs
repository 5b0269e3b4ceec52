//! The schema token-janitor lives in: `auth` by default, any other with
//! `--schema NAME` (docs/design.md, "One schema per install").
//!
//! The SQL of `migrations/` and `sql/`, and the statements of this crate,
//! are written for schema `auth`; [`Schema::sql`] rewrites such a text for
//! another schema. A schema name is validated once, by [`Schema::new`], to
//! a lowercase identifier that never needs quoting, so the rewrite is a
//! plain substitution of the word `auth`.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

/// The default schema (pinned).
pub const DEFAULT_SCHEMA: &str = "auth";

/// What a schema name must be, as the error message says it.
pub const SCHEMA_NAME_RULE: &str = "a lowercase identifier ([a-z_][a-z0-9_]*, at most 63 \
     characters) that does not start with pg_ and is not public or information_schema";

/// A validated schema name: a lowercase identifier, so that it never needs
/// quoting, and none of PostgreSQL's own schemas or `public` (which the
/// database owner controls).
///
/// ```
/// use token_janitor::{Error, Schema};
///
/// assert_eq!(Schema::default().name(), "auth");
/// assert_eq!("tokens".parse::<Schema>()?.name(), "tokens");
/// assert!(matches!(Schema::new("public"), Err(Error::InvalidSchema { .. })));
/// # Ok::<(), Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Schema(String);

impl Default for Schema {
    fn default() -> Self {
        Self(DEFAULT_SCHEMA.to_string())
    }
}

impl fmt::Display for Schema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Schema {
    type Err = Error;

    fn from_str(name: &str) -> Result<Self> {
        Self::new(name)
    }
}

/// Whether `c` continues an identifier.
fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

impl Schema {
    /// The schema `name`.
    ///
    /// # Errors
    /// [`Error::InvalidSchema`] unless `name` is a lowercase identifier
    /// (`[a-z_][a-z0-9_]*`, at most 63 characters) that does not start with
    /// `pg_` and is not `public` or `information_schema`.
    ///
    /// ```
    /// use token_janitor::Schema;
    ///
    /// let err = Schema::new("Auth").unwrap_err();
    /// assert!(err.to_string().contains("lowercase"), "{err}");
    /// ```
    pub fn new(name: &str) -> Result<Self> {
        let invalid = |reason: &str| Error::InvalidSchema {
            name: name.to_string(),
            reason: reason.to_string(),
        };
        let mut chars = name.chars();
        match chars.next() {
            None => return Err(invalid("it is empty")),
            Some(c) if !(c.is_ascii_lowercase() || c == '_') => {
                return Err(invalid("it does not start with a lowercase letter or _"));
            }
            Some(_) => {}
        }
        if !chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_') {
            return Err(invalid("it holds a character other than a-z, 0-9 and _"));
        }
        if name.len() > 63 {
            return Err(invalid("it is longer than 63 characters"));
        }
        if name.starts_with("pg_") || name == "public" || name == "information_schema" {
            return Err(invalid("it is PostgreSQL's or the database owner's"));
        }
        Ok(Self(name.to_string()))
    }

    /// The schema's name (never needs quoting).
    ///
    /// ```
    /// use token_janitor::Schema;
    ///
    /// assert_eq!(Schema::new("tokens")?.name(), "tokens");
    /// # Ok::<(), token_janitor::Error>(())
    /// ```
    pub fn name(&self) -> &str {
        &self.0
    }

    /// Whether this is [`DEFAULT_SCHEMA`].
    pub(crate) fn is_default(&self) -> bool {
        self.0 == DEFAULT_SCHEMA
    }

    /// `sql`, written for schema `auth`, for this schema: every `auth` that
    /// stands as a word of its own (`auth.name`, `'auth'::regnamespace`,
    /// `nspname = 'auth'`, `SCHEMA auth`) becomes this schema's name; words
    /// that merely contain it (`authenticator`, `p_auth`) stay.
    pub(crate) fn sql<'a>(&self, sql: &'a str) -> Cow<'a, str> {
        if self.is_default() {
            return Cow::Borrowed(sql);
        }
        let mut out = String::with_capacity(sql.len());
        let mut done = 0;
        for (at, _) in sql.match_indices(DEFAULT_SCHEMA) {
            let end = at + DEFAULT_SCHEMA.len();
            let before = sql[..at].chars().next_back();
            let after = sql[end..].chars().next();
            if !before.is_some_and(is_ident_char) && !after.is_some_and(is_ident_char) {
                out.push_str(&sql[done..at]);
                out.push_str(&self.0);
                done = end;
            }
        }
        out.push_str(&sql[done..]);
        Cow::Owned(out)
    }

    /// The pg_cron job's command (pinned): `CALL NAME.run_token_cleanup()`.
    /// Nothing may come before the CALL in the same command string: it would
    /// open a transaction and break the procedure's COMMITs.
    ///
    /// ```
    /// use token_janitor::Schema;
    ///
    /// // Without pg_cron, run this from your own scheduler, outside a transaction.
    /// assert_eq!(Schema::default().job_command(), "CALL auth.run_token_cleanup()");
    /// ```
    pub fn job_command(&self) -> String {
        format!("CALL {}.run_token_cleanup()", self.0)
    }

    /// The default name of one of token-janitor's roles (`owner`, `app` or
    /// `monitor`): `token_janitor_KIND` in schema `auth`, `NAME_KIND` in
    /// another, so that two installs in one database, or on one server,
    /// never share a role unless told to.
    pub(crate) fn default_role(&self, kind: &str) -> String {
        if self.is_default() {
            format!("token_janitor_{kind}")
        } else {
            format!("{}_{kind}", self.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_lowercase_identifiers_that_are_nobody_elses() {
        for good in ["auth", "tj", "_x", "a1_b2", &"a".repeat(63)] {
            assert_eq!(Schema::new(good).unwrap().name(), good);
        }
        for bad in [
            "",
            "Auth",
            "1tj",
            "tj-x",
            "tj.x",
            "tj\"",
            "tj x",
            "pg_catalog",
            "pg_tj",
            "public",
            "information_schema",
            &"a".repeat(64),
        ] {
            let err = Schema::new(bad).unwrap_err().to_string();
            assert!(err.contains(SCHEMA_NAME_RULE), "{bad:?}: {err}");
        }
    }

    #[test]
    fn the_rewrite_replaces_the_word_auth_only() {
        let tj = Schema::new("tj").unwrap();
        let sql = "CREATE SCHEMA IF NOT EXISTS auth;
            SELECT auth.issue_token(p_authenticator => x) FROM auth.sessions
            WHERE c.relnamespace = 'auth'::regnamespace AND n.nspname = 'auth'
            AND x = 'authenticator' AND p_auth = oauth;
            GRANT USAGE ON SCHEMA auth TO %I; -- schema auth
            auth";
        assert_eq!(
            tj.sql(sql),
            "CREATE SCHEMA IF NOT EXISTS tj;
            SELECT tj.issue_token(p_authenticator => x) FROM tj.sessions
            WHERE c.relnamespace = 'tj'::regnamespace AND n.nspname = 'tj'
            AND x = 'authenticator' AND p_auth = oauth;
            GRANT USAGE ON SCHEMA tj TO %I; -- schema tj
            tj"
        );
        assert_eq!(Schema::default().sql(sql), sql);
        assert_eq!(tj.job_command(), "CALL tj.run_token_cleanup()");
        assert_eq!(tj.default_role("app"), "tj_app");
        assert_eq!(Schema::default().default_role("app"), "token_janitor_app");
    }
}
