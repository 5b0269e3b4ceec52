//! The trap test for the class (issue 28, item 2): a database whose schema
//! `public` belongs to a non-superuser, the database owner, who has planted
//! there, for every function, type, operator and relation name that
//! token-janitor's SQL and Rust statements name, an exact-type overload or a
//! same-named object that records its call, and put `public` first on the
//! database's search_path. The names are read from the code at test time
//! (every SQL file, the string literals of every Rust source), so a name
//! added later is trapped without anyone listing it. Every command and every
//! SQL API routine then runs as a superuser and as the owner role: no trap
//! may run, and no role may change.
//!
//! `bench` is not among the commands: its set-up runs only in scratch
//! databases it creates from template1 (on pinned connections), never in
//! the database it is pointed at, and traps planted in template1 would reach
//! every other test's database on the shared server.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use common::*;
use token_janitor::operator::{MigrateOptions, migrate, status};
use token_janitor::{RevokeReason, Rotation, Schema, TokenStore};
use tokio_postgres::Client;

/// The types polymorphic signatures are instantiated with (and the only
/// operand types operators are trapped for), as `format_type` spells them;
/// each also as an array.
const COMMON_TYPES: &[&str] = &[
    "text",
    "integer",
    "bigint",
    "uuid",
    "bytea",
    "timestamp with time zone",
    "interval",
    "boolean",
    "jsonb",
    "double precision",
    "numeric",
];

/// Polymorphic pseudo-types that stand for one element type.
const ELEMENT_POLYMORPHIC: &[&str] = &[
    "anyelement",
    "anynonarray",
    "anycompatible",
    "anycompatiblenonarray",
];

/// Polymorphic pseudo-types that stand for an array of it.
const ARRAY_POLYMORPHIC: &[&str] = &["anyarray", "anycompatiblearray"];

/// Pseudo-types a PL/pgSQL trap can stand in for: the polymorphic ones
/// (instantiated), `"any"` (likewise), and the results `record` and `void`.
/// Any other (internal, cstring, trigger, the range polymorphics, ...) makes
/// a signature untrappable in PL/pgSQL.
const TRAPPABLE_PSEUDO: &[&str] = &[
    "anyelement",
    "anynonarray",
    "anycompatible",
    "anycompatiblenonarray",
    "anyarray",
    "anycompatiblearray",
    "any",
    "record",
    "void",
];

// ---------------------------------------------------------------- the names

/// The texts token-janitor runs: every SQL file (sql/, migrations/) whole,
/// and the string literals of every Rust source under src/.
fn code_texts() -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut texts = Vec::new();
    for dir in ["sql", "migrations"] {
        for path in files_under(&root.join(dir), "sql") {
            texts.push(std::fs::read_to_string(path).unwrap());
        }
    }
    for path in files_under(&root.join("src"), "rs") {
        texts.extend(rust_string_literals(
            &std::fs::read_to_string(path).unwrap(),
        ));
    }
    texts
}

/// Files ending in `.{ext}` under `dir`, recursively.
fn files_under(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(files_under(&path, ext));
        } else if path.extension().is_some_and(|e| e == ext) {
            found.push(path);
        }
    }
    found.sort();
    found
}

/// The contents of the string literals of Rust source `source` (plain, byte
/// and raw ones); comments and char literals are skipped, so that a quote in
/// them does not pair with the wrong one.
fn rust_string_literals(source: &str) -> Vec<String> {
    let chars: Vec<char> = source.chars().collect();
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    let mut literals = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let rest = &chars[i..];
        let starts_token = i == 0 || !ident(chars[i - 1]);
        if rest.starts_with(&['/', '/']) {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if rest.starts_with(&['/', '*']) {
            i += 2;
            while i + 1 < chars.len() && !(chars[i] == '*' && chars[i + 1] == '/') {
                i += 1;
            }
            i += 2;
        } else if chars[i] == 'r'
            && (starts_token || (chars[i - 1] == 'b' && (i == 1 || !ident(chars[i - 2]))))
            && rest.iter().skip(1).find(|c| **c != '#') == Some(&'"')
        {
            let hashes = rest[1..].iter().take_while(|c| **c == '#').count();
            let close: Vec<char> = std::iter::once('"')
                .chain(std::iter::repeat_n('#', hashes))
                .collect();
            let start = i + 2 + hashes;
            let mut end = start;
            while end < chars.len() && !chars[end..].starts_with(&close) {
                end += 1;
            }
            literals.push(chars[start..end].iter().collect());
            i = end + close.len();
        } else if chars[i] == '"' {
            let mut end = i + 1;
            while end < chars.len() && chars[end] != '"' {
                end += if chars[end] == '\\' { 2 } else { 1 };
            }
            literals.push(chars[i + 1..end.min(chars.len())].iter().collect());
            i = end + 1;
        } else if chars[i] == '\'' {
            // A char literal ('x', '\n', '\''), or a lifetime ('a).
            if rest.get(1) == Some(&'\\') {
                i += 2;
                while i < chars.len() && chars[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if rest.get(2) == Some(&'\'') {
                i += 3;
            } else {
                i += 1;
            }
        } else {
            i += 1;
        }
    }
    literals
}

/// Every identifier-like word of `texts`, lower-cased.
fn words(texts: &[String]) -> BTreeSet<String> {
    let mut words = BTreeSet::new();
    for text in texts {
        let mut word = String::new();
        for c in text.chars().chain(std::iter::once(' ')) {
            if c.is_ascii_alphanumeric() || c == '_' || (c == '$' && !word.is_empty()) {
                word.push(c.to_ascii_lowercase());
            } else {
                if word.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
                    words.insert(std::mem::take(&mut word));
                }
                word.clear();
            }
        }
    }
    words
}

/// Every run of operator characters in `texts`, and every part of one (a
/// run like `=-` may be two operators to the server's lexer).
fn operator_tokens(texts: &[String]) -> BTreeSet<String> {
    const OPERATOR_CHARS: &str = "+-*/<>=~!@#%^&|`?";
    let mut tokens = BTreeSet::new();
    for text in texts {
        let chars: Vec<char> = text.chars().collect();
        let mut i = 0;
        while i < chars.len() {
            let start = i;
            while i < chars.len() && OPERATOR_CHARS.contains(chars[i]) {
                i += 1;
            }
            for a in start..i {
                for b in a + 1..=i {
                    tokens.insert(chars[a..b].iter().collect::<String>());
                }
            }
            i = i.max(start + 1);
        }
    }
    tokens
}

// ---------------------------------------------------------------- the traps

/// `text` with every whole-word `word` replaced by `with`; whether any was.
fn replace_word(text: &str, word: &str, with: &str) -> (String, bool) {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut out = String::new();
    let mut found = false;
    let mut rest = text;
    while let Some(at) = rest.find(word) {
        let before = rest[..at].chars().next_back();
        let after = rest[at + word.len()..].chars().next();
        out.push_str(&rest[..at]);
        if before.is_some_and(ident) || after.is_some_and(ident) {
            out.push_str(word);
        } else {
            out.push_str(with);
            found = true;
        }
        rest = &rest[at + word.len()..];
    }
    out.push_str(rest);
    (out, found)
}

/// `text` (a signature's arguments or result) with its polymorphic types
/// instantiated as `t`, or None when `t` cannot instantiate them (an array
/// for a non-array or as the element of an array type).
fn instantiate(text: &str, t: &str) -> Option<String> {
    let array = t.ends_with("[]");
    if array && text.contains("VARIADIC \"any\"") {
        return None;
    }
    let mut out = text
        .replace("VARIADIC \"any\"", &format!("VARIADIC {t}[]"))
        .replace("\"any\"", t);
    for poly in ELEMENT_POLYMORPHIC {
        let (next, found) = replace_word(&out, poly, t);
        if found && array && poly.ends_with("nonarray") {
            return None;
        }
        out = next;
    }
    for poly in ARRAY_POLYMORPHIC {
        let (next, found) = replace_word(&out, poly, &format!("{t}[]"));
        if found && array {
            return None;
        }
        out = next;
    }
    Some(out)
}

/// Every common type and its array.
fn common_types() -> Vec<String> {
    COMMON_TYPES
        .iter()
        .flat_map(|t| [t.to_string(), format!("{t}[]")])
        .collect()
}

/// A SQL string literal.
fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// What was planted, by kind, and what could not be.
#[derive(Default)]
struct Planted {
    next_id: i32,
    created: BTreeMap<&'static str, usize>,
    skipped: BTreeMap<String, usize>,
    failed: Vec<String>,
}

impl Planted {
    /// Plants one trap: its call counter (a sequence: a call is counted even
    /// when the caller's transaction rolls back), its row in public.trap, the
    /// PL/pgSQL function `head` whose body counts the call, records it in
    /// public.trap_calls, tries to make `dbo` a superuser and raises, and
    /// `then`, the statement that uses the function (given its name `trap_N`),
    /// if any. All of it or nothing, as the role it runs as.
    async fn plant(
        &mut self,
        client: &Client,
        dbo: &str,
        kind: &'static str,
        label: &str,
        head: impl FnOnce(&str) -> String,
        then: impl FnOnce(&str) -> String,
    ) {
        self.next_id += 1;
        let id = self.next_id;
        let name = format!("public.trap_{id}");
        let sql = format!(
            "BEGIN;
             CREATE SEQUENCE {name}_calls;
             INSERT INTO public.trap (id, kind, label) VALUES ({id}, '{kind}', {label_sql});
             CREATE FUNCTION {head} LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $trap$
             BEGIN
                 PERFORM pg_catalog.nextval('{name}_calls');
                 INSERT INTO public.trap_calls (id) VALUES ({id});
                 BEGIN
                     EXECUTE 'ALTER ROLE {dbo} SUPERUSER';
                 EXCEPTION WHEN OTHERS THEN NULL;
                 END;
                 RAISE EXCEPTION 'trap % called: %', {id}, {label_sql};
             END
             $trap$;
             {then};
             COMMIT;",
            label_sql = literal(label),
            head = head(&name),
            then = then(&name),
        );
        match client.batch_execute(&sql).await {
            Ok(()) => *self.created.entry(kind).or_default() += 1,
            Err(err) => {
                client.batch_execute("ROLLBACK").await.unwrap();
                let message = err
                    .as_db_error()
                    .map_or(err.to_string(), |e| e.message().to_string());
                if message.contains("already exists") {
                    self.skip(format!("{kind}: the same signature already planted"));
                } else {
                    self.failed.push(format!("{kind} {label}: {message}"));
                }
            }
        }
    }

    fn skip(&mut self, reason: String) {
        *self.skipped.entry(reason).or_default() += 1;
    }
}

/// Plants the traps in `db`'s schema public as `dbo` (its owner, not a
/// superuser), for the names of `texts`.
async fn plant_traps(db: &TestDb, dbo: &str, texts: &[String]) -> Planted {
    let words: Vec<String> = words(texts).into_iter().collect();
    let operators: Vec<String> = operator_tokens(texts).into_iter().collect();
    let client = &db.client;
    client
        .batch_execute(&format!(
            "SET ROLE {dbo};
             SET search_path = pg_catalog;
             CREATE TABLE public.trap (id int4 PRIMARY KEY, kind text NOT NULL, label text NOT NULL);
             CREATE TABLE public.trap_calls (id int4 NOT NULL);
             GRANT INSERT ON public.trap_calls TO PUBLIC;"
        ))
        .await
        .unwrap();
    let mut planted = Planted::default();

    // (i) functions and aggregates of pg_catalog named in the code, with
    // their exact signatures, polymorphic ones instantiated.
    let functions = client
        .query(
            "SELECT p.proname::text, p.prokind::text, pg_get_function_arguments(p.oid),
                    pg_get_function_result(p.oid), COALESCE(a.aggkind::text, ''), p.provariadic <> 0,
                    ARRAY(SELECT t.typname::text
                          FROM unnest(COALESCE(p.proallargtypes, p.proargtypes::oid[]) || p.prorettype) u(oid)
                          JOIN pg_type t ON t.oid = u.oid WHERE t.typtype = 'p')
             FROM pg_proc p LEFT JOIN pg_aggregate a ON a.aggfnoid = p.oid
             WHERE p.pronamespace = 'pg_catalog'::regnamespace AND p.proname = ANY($1)
             ORDER BY 1, 3",
            &[&words],
        )
        .await
        .unwrap();
    for row in &functions {
        let (name, prokind, args, result): (String, String, String, String) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        let (aggkind, variadic, pseudo): (String, bool, Vec<String>) =
            (row.get(4), row.get(5), row.get(6));
        if let Some(p) = pseudo
            .iter()
            .find(|p| !TRAPPABLE_PSEUDO.contains(&p.as_str()))
        {
            planted.skip(format!("function: pseudo-type {p}"));
            continue;
        }
        if prokind == "w" {
            planted.skip("function: window function (C only)".to_string());
            continue;
        }
        if prokind == "a" && (aggkind != "n" || variadic) {
            planted.skip("function: ordered-set or variadic aggregate".to_string());
            continue;
        }
        let polymorphic = pseudo
            .iter()
            .any(|p| !["record", "void"].contains(&p.as_str()));
        let instances: Vec<(String, String)> = if polymorphic {
            common_types()
                .iter()
                .filter_map(|t| Some((instantiate(&args, t)?, instantiate(&result, t)?)))
                .collect()
        } else {
            vec![(args.clone(), result.clone())]
        };
        for (args, result) in instances {
            let label = format!("{name}({args}) -> {result}");
            let quoted = format!("public.\"{name}\"");
            if prokind == "a" {
                let agg_args = if args.is_empty() {
                    "*".to_string()
                } else {
                    args.clone()
                };
                let step_args = if args.is_empty() {
                    result.clone()
                } else {
                    format!("{result}, {args}")
                };
                planted
                    .plant(
                        client,
                        dbo,
                        "function",
                        &label,
                        |trap| format!("{trap}({step_args}) RETURNS {result}"),
                        |trap| {
                            format!("CREATE AGGREGATE {quoted}({agg_args}) (SFUNC = {trap}, STYPE = {result})")
                        },
                    )
                    .await;
            } else {
                planted
                    .plant(
                        client,
                        dbo,
                        "function",
                        &label,
                        |_| format!("{quoted}({args}) RETURNS {result}"),
                        |_| "SELECT".to_string(),
                    )
                    .await;
            }
        }
    }

    // (ii) types of pg_catalog named in the code: a domain of that name.
    let types: Vec<String> = client
        .query(
            "SELECT t.typname::text FROM pg_type t
             WHERE t.typnamespace = 'pg_catalog'::regnamespace AND t.typname = ANY($1)
               AND t.typtype <> 'p' AND t.typrelid = 0 ORDER BY 1",
            &[&words],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    for name in types {
        planted
            .plant(
                client,
                dbo,
                "domain",
                &format!("domain {name}"),
                |trap| format!("{trap}() RETURNS bool"),
                |trap| {
                    format!(
                        "CREATE DOMAIN public.\"{name}\" AS pg_catalog.\"{name}\" CHECK ({trap}())"
                    )
                },
            )
            .await;
    }

    // (iii) operators of pg_catalog whose symbol the code uses, for the
    // operand types among the common ones.
    let common = common_types();
    let rows = client
        .query(
            "SELECT o.oprname::text, CASE WHEN o.oprleft = 0 THEN NULL ELSE format_type(o.oprleft, NULL) END,
                    format_type(o.oprright, NULL), format_type(o.oprresult, NULL)
             FROM pg_operator o
             WHERE o.oprnamespace = 'pg_catalog'::regnamespace AND o.oprname = ANY($1) ORDER BY 1, 2, 3",
            &[&operators],
        )
        .await
        .unwrap();
    let mut operator_pairs = BTreeSet::new();
    for row in &rows {
        let (op, left, right, result): (String, Option<String>, String, String) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        for t in &common {
            let (Some(l), Some(r), Some(res)) = (
                left.as_deref()
                    .map_or(Some(String::new()), |l| instantiate(l, t)),
                instantiate(&right, t),
                instantiate(&result, t),
            ) else {
                continue;
            };
            let operands_common = (l.is_empty() || common.contains(&l)) && common.contains(&r);
            if !operands_common || !operator_pairs.insert((op.clone(), l.clone(), r.clone())) {
                continue;
            }
            let (params, leftarg) = if l.is_empty() {
                (r.clone(), String::new())
            } else {
                (format!("{l}, {r}"), format!("LEFTARG = {l}, "))
            };
            planted
                .plant(
                    client,
                    dbo,
                    "operator",
                    &format!("operator {l} {op} {r} -> {res}"),
                    |trap| format!("{trap}({params}) RETURNS {res}"),
                    |trap| {
                        format!("CREATE OPERATOR public.{op} ({leftarg}RIGHTARG = {r}, FUNCTION = {trap})")
                    },
                )
                .await;
        }
    }

    // (iv) relations: pg_catalog's named in the code, refinery's default
    // history table, and the names the code gives auth's relations: a view
    // whose rows count a call.
    let mut relations: BTreeMap<String, String> = client
        .query(
            "SELECT c.relname::text,
                    string_agg(CASE WHEN t.typtype = 'p' THEN format('%I::text AS %1$I', a.attname)
                                    ELSE quote_ident(a.attname) END, ', ' ORDER BY a.attnum)
             FROM pg_class c
             JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
             JOIN pg_type t ON t.oid = a.atttypid
             WHERE c.relnamespace = 'pg_catalog'::regnamespace AND c.relkind IN ('r', 'v', 'm', 'p', 'f')
               AND c.relname = ANY($1) GROUP BY c.relname ORDER BY 1",
            &[&words],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| {
            let (name, columns): (String, String) = (r.get(0), r.get(1));
            // A column of a pseudo-type (pg_stats' anyarray) cannot be a
            // view's: it is shown as text.
            let source = format!("SELECT {columns} FROM pg_catalog.\"{name}\"");
            (name, source)
        })
        .collect();
    if words.iter().any(|w| w == "refinery_schema_history") {
        relations.insert(
            "refinery_schema_history".to_string(),
            "SELECT 1::int4 AS version, 'trap'::varchar(255) AS name, ''::varchar(255) AS applied_on, \
             ''::varchar(255) AS checksum"
                .to_string(),
        );
    }
    for text in texts {
        let mut rest = text.as_str();
        while let Some(at) = rest.find("auth.") {
            rest = &rest[at + 5..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() && !relations.contains_key(&name) {
                relations.insert(name, "SELECT".to_string());
            }
        }
    }
    for (name, source) in relations {
        planted
            .plant(
                client,
                dbo,
                "view",
                &format!("view {name}"),
                |trap| format!("{trap}() RETURNS bool"),
                |trap| format!("CREATE VIEW public.\"{name}\" AS {source} WHERE {trap}()"),
            )
            .await;
    }

    client
        .batch_execute(
            "GRANT USAGE, UPDATE ON ALL SEQUENCES IN SCHEMA public TO PUBLIC;
             GRANT SELECT ON ALL TABLES IN SCHEMA public TO PUBLIC;
             RESET search_path; RESET ROLE;",
        )
        .await
        .unwrap();
    planted
}

/// The traps that ran: their sequences were advanced. Read on a pinned
/// connection.
async fn sprung(client: &Client) -> Vec<String> {
    column(
        client,
        "SELECT t.kind || ' ' || t.label FROM public.trap t
         JOIN pg_sequences s ON s.schemaname = 'public' AND s.sequencename = 'trap_' || t.id || '_calls'
         WHERE s.last_value IS NOT NULL ORDER BY t.id",
    )
    .await
}

// ---------------------------------------------------------------- the runs

/// Failures of the entry points, each named, gathered so that one hole does
/// not hide the next.
#[derive(Default)]
struct Failures(Vec<String>);

impl Failures {
    fn check<T, E: std::fmt::Debug>(&mut self, what: &str, result: Result<T, E>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(err) => {
                self.0.push(format!("{what}: {err:?}"));
                None
            }
        }
    }

    /// Runs the CLI with `args` as `user`; it must succeed.
    async fn cli(&mut self, db: &TestDb, user: &str, args: &[&str]) {
        let out = run_cli(args, &cli_url(&db.url, user)).await;
        if !out.status.success() {
            self.0.push(format!(
                "token-janitor {} as {user}: {}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
}

/// Every SQL API routine, from a session of `user` that does not pin its
/// search_path (the database's hostile one applies). The test's own SQL
/// names nothing unqualified but the routines it calls.
async fn sql_api(db: &TestDb, user: &str, failures: &mut Failures) {
    let c = connect_config(&db.unpinned_config(Some(user))).await;
    let path: Vec<String> = column(&c, "SHOW search_path").await;
    assert_eq!(path, vec!["public, pg_catalog"], "the hostile path applies");
    let policy = |grace: &str| {
        format!("UPDATE auth.cleanup_policy SET reuse_grace = '{grace}', rotated_retention = '0'")
    };
    db.client.batch_execute(&policy("1 minute")).await.unwrap();
    let login = format!("eve_{user}");
    let (h0, h1, h2, seal) = (vec![1u8; 32], vec![2u8; 32], vec![3u8; 32], vec![4u8; 32]);
    let issue = "SELECT session_id FROM auth.issue_token(p_user_id => $1, p_token_hash => $2, p_ttl => '1 hour')";
    let rotate = "SELECT outcome FROM auth.rotate_token(p_session_id => $1, p_generation => 0,
                      p_token_hash => $2, p_new_token_hash => $3, p_ttl => '1 hour', p_successor_seal => $4)";
    let Some(session) = failures.check(
        &format!("auth.issue_token as {user}"),
        c.query_one(issue, &[&login, &h0]).await,
    ) else {
        return;
    };
    let session: uuid::Uuid = session.get(0);
    // Rotated, then a retry within the grace (the sealed successor), then a
    // replay once the grace is over.
    for (what, expected) in [
        ("rotation", "rotated"),
        ("retry", "rotated"),
        ("replay", "reuse_detected"),
    ] {
        if what == "replay" {
            db.client.batch_execute(&policy("0")).await.unwrap();
        }
        if let Some(row) = failures.check(
            &format!("auth.rotate_token ({what}) as {user}"),
            c.query_one(rotate, &[&session, &h0, &h1, &seal]).await,
        ) {
            assert_eq!(row.get::<_, &str>(0), expected, "{what} as {user}");
        }
    }
    let second = c.query_one(issue, &[&login, &h2]).await;
    if let Some(second) = failures.check(&format!("auth.issue_token as {user}"), second) {
        let second: uuid::Uuid = second.get(0);
        let revoked = c
            .query_one(
                "SELECT auth.revoke_session(p_session_id => $1, p_reason => 'logout')",
                &[&second],
            )
            .await;
        failures.check(&format!("auth.revoke_session as {user}"), revoked);
    }
    for (what, sql) in [
        (
            "auth.list_sessions",
            "SELECT * FROM auth.list_sessions(p_user_id => $1)",
        ),
        (
            "auth.revoke_user_sessions",
            "SELECT auth.revoke_user_sessions(p_user_id => $1)",
        ),
    ] {
        failures.check(&format!("{what} as {user}"), c.query(sql, &[&login]).await);
    }
    for sql in [
        "SELECT * FROM auth.purge_refresh_tokens()",
        "CALL auth.run_token_cleanup()",
        "SELECT * FROM auth.explain_purge()",
        "SELECT * FROM auth.cleanup_backlog()",
        "SELECT * FROM auth.self_test()",
        "SELECT * FROM auth.cleanup_job()",
        "SELECT * FROM auth.security_event_summary()",
        "SELECT * FROM auth.token_counts(p_exact => true)",
        "SELECT * FROM auth.purge_targets()",
    ] {
        failures.check(&format!("{sql} as {user}"), c.batch_execute(sql).await);
    }
}

/// TokenStore on a pool of `user`'s connections that the application built
/// itself, without token-janitor's pinned path.
async fn token_store(db: &TestDb, user: &str, failures: &mut Failures) {
    let manager = deadpool_postgres::Manager::from_config(
        db.unpinned_config(Some(user)),
        tokio_postgres::NoTls,
        deadpool_postgres::ManagerConfig {
            recycling_method: deadpool_postgres::RecyclingMethod::Fast,
        },
    );
    let pool = deadpool_postgres::Pool::builder(manager)
        .max_size(2)
        .build()
        .unwrap();
    let store = TokenStore::new(pool);
    let login = format!("mallory_{user}");
    let Some(issued) = failures.check(
        &format!("TokenStore::issue as {user}"),
        store.issue(&login).await,
    ) else {
        return;
    };
    if let Some(rotation) = failures.check(
        &format!("TokenStore::rotate as {user}"),
        store.rotate(issued.token.expose()).await,
    ) {
        assert!(matches!(rotation, Rotation::Rotated(_)), "{rotation:?}");
    }
    failures.check(
        &format!("TokenStore::list_sessions as {user}"),
        store.list_sessions(&login).await,
    );
    failures.check(
        &format!("TokenStore::revoke_session as {user}"),
        store
            .revoke_session(issued.session_id, RevokeReason::Logout)
            .await,
    );
    failures.check(
        &format!("TokenStore::revoke_user_sessions as {user}"),
        store
            .revoke_user_sessions(&login, RevokeReason::Admin)
            .await,
    );
}

#[tokio::test]
async fn nothing_the_database_owner_plants_for_the_names_the_code_uses_runs() {
    let db = TestDb::empty().await;
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let [dbo, owner, app, monitor] =
        ["dbo", "owner", "app", "monitor"].map(|role| format!("tj_{role}_{suffix}"));
    db.client
        .batch_execute(&format!(
            "CREATE ROLE {dbo} NOLOGIN; CREATE ROLE {owner} LOGIN;
             ALTER DATABASE {} OWNER TO {dbo}",
            db.name()
        ))
        .await
        .unwrap();

    let texts = code_texts();
    let planted = plant_traps(&db, &dbo, &texts).await;
    println!("traps planted: {:?}", planted.created);
    println!(
        "signatures not trappable in PL/pgSQL: {:?}",
        planted.skipped
    );
    assert!(
        planted.failed.is_empty(),
        "traps that could not be planted: {:#?}",
        planted.failed
    );
    for (kind, floor) in [
        ("function", 400),
        ("domain", 20),
        ("operator", 100),
        ("view", 20),
    ] {
        let count = planted.created.get(kind).copied().unwrap_or(0);
        assert!(
            count >= floor,
            "only {count} {kind} traps (floor {floor}): the generator missed names"
        );
    }
    db.client
        .batch_execute(&format!(
            "SET ROLE {dbo}; ALTER DATABASE {} SET search_path = public, pg_catalog; RESET ROLE",
            db.name()
        ))
        .await
        .unwrap();

    let superuser = db.url.config().get_user().unwrap().to_string();
    let mut failures = Failures::default();
    let roles = [
        "--app-role",
        app.as_str(),
        "--monitor-role",
        monitor.as_str(),
    ];
    let migrate_args: Vec<&str> = ["migrate", "--no-schedule", "--owner-role", owner.as_str()]
        .into_iter()
        .chain(roles)
        .collect();
    for user in [superuser.as_str(), owner.as_str()] {
        for args in [
            &migrate_args[..],
            &migrate_args[..],
            &["verify", "--no-schedule"],
            &["status"],
            &["status", "--exact"],
        ] {
            failures.cli(&db, user, args).await;
        }
    }
    // The library, on connections an application opened without the pin.
    let options = MigrateOptions {
        owner_role: Some(owner.clone()),
        app_role: Some(app.clone()),
        monitor_role: Some(monitor.clone()),
        ..no_schedule()
    };
    let mut unpinned = db.connect_unpinned().await;
    failures.check("library migrate", migrate(&mut unpinned, &options).await);
    for exact in [false, true] {
        failures.check(
            "library status",
            status(&unpinned, &Schema::default(), exact, 5).await,
        );
    }
    for user in [superuser.as_str(), owner.as_str()] {
        sql_api(&db, user, &mut failures).await;
        token_store(&db, user, &mut failures).await;
    }

    let sprung = sprung(&db.client).await;
    let superusers: Vec<String> = column(
        &db.client,
        &format!(
            "SELECT rolname::text FROM pg_roles WHERE rolsuper AND rolname IN ('{dbo}', '{owner}')"
        ),
    )
    .await;
    drop(unpinned);
    drop(db);
    server()
        .with_dbname("postgres")
        .connect()
        .await
        .unwrap()
        .batch_execute(&format!(
            "DROP ROLE IF EXISTS {owner}, {app}, {monitor}, {dbo}"
        ))
        .await
        .unwrap();
    assert!(
        sprung.is_empty() && failures.0.is_empty() && superusers.is_empty(),
        "traps that ran: {sprung:#?}\nentry points that failed: {:#?}\nroles made superuser: {superusers:?}",
        failures.0
    );
}
