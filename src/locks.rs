//! The advisory locks token-janitor takes, read from `sql/00_locks.sql`, the
//! one place that names them for the SQL and for this crate: a lock's key
//! is its four-letter tag read as a big-endian integer (docs/design.md §7).

/// The definitions the keys are read from.
const LOCKS_SQL: &str = include_str!("../sql/00_locks.sql");

/// The advisory lock key of lock `name` as `sql/00_locks.sql` names it
/// (`WHEN '<name>' THEN '<tag>'`), the value `auth._lock_key(name)` returns.
///
/// # Panics
/// When the file names no such lock: a programming error, caught by the
/// unit tests for every name this crate uses.
pub fn key(name: &str) -> i64 {
    let when = format!("WHEN '{name}' THEN '");
    let tag = LOCKS_SQL
        .lines()
        .find_map(|line| line.trim().strip_prefix(&when))
        .and_then(|rest| rest.get(..4))
        .unwrap_or_else(|| panic!("sql/00_locks.sql names no lock {name:?}"));
    let bytes: [u8; 4] = tag.as_bytes().try_into().expect("a four-byte tag");
    i64::from(u32::from_be_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::key;

    #[test]
    fn keys_are_the_tags_read_as_big_endian_integers() {
        assert_eq!(key("migrate"), 0x746a_6d67);
        assert_eq!(key("cleanup run"), 1_953_129_324);
        assert_eq!(key("purge"), 1_953_129_325);
    }

    #[test]
    #[should_panic(expected = "names no lock")]
    fn an_unknown_lock_is_a_programming_error() {
        key("no such lock");
    }
}
