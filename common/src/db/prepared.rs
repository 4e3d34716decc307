//! Raw SQL that PostgreSQL parses and plans once per connection.
//!
//! `diesel::sql_query` never enters diesel's prepared statement cache (its text could be anything), so
//! every execution sends the statement again and PostgreSQL parses, analyses and plans it again. For
//! the conductor's set-based statements, run hundreds of times a second, that was more CPU than
//! executing them (`pg_stat_statements` with `track_planning`: 554 ms of planning against 488 ms of
//! execution for the heartbeats of one benchmark window, before counting the parse).
//!
//! [`prepared`] takes the same text, `$n` placeholders and `.bind::<ST, _>()` calls as `sql_query`,
//! and is cached by its text like diesel's own queries. Use it for fixed statements only: every
//! distinct text becomes a prepared statement on each pooled connection.

use std::marker::PhantomData;

use diesel::pg::Pg;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::serialize::ToSql;
use diesel::sql_types::{HasSqlType, Untyped};
use diesel::{QueryResult, RunQueryDsl};

/// A statement with `$n` placeholders and its bound values; see the module docs.
#[must_use = "queries are only executed when calling `load`, `execute` or similar"]
pub struct Prepared<'a> {
    /// The text split at its placeholders: each piece of SQL, then the placeholder's bind index.
    pieces: Vec<(&'a str, Option<usize>)>,
    binds: Vec<Box<dyn QueryFragment<Pg> + 'a>>,
}

/// The text of a `.sql` file without its full-line `--` comments, for [`prepared`]: the placeholder
/// scanner does not know comments, so a `$n` or an apostrophe in one would be misread.
pub fn strip_comments(sql: &str) -> String {
    sql.lines()
        .filter(|line| !line.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A statement like `diesel::sql_query(sql)`, but prepared once per connection.
pub fn prepared(sql: &str) -> Prepared<'_> {
    Prepared {
        pieces: split_placeholders(sql),
        binds: Vec::new(),
    }
}

impl<'a> Prepared<'a> {
    /// Binds the next placeholder (`$1`, then `$2`, ...), as `SqlQuery::bind`.
    pub fn bind<ST, T>(mut self, value: T) -> Self
    where
        Pg: HasSqlType<ST>,
        T: ToSql<ST, Pg> + 'a,
        ST: 'a,
    {
        self.binds.push(Box::new(Bound::<ST, T> {
            value,
            st: PhantomData,
        }));
        self
    }
}

/// The text cut at every `$n` outside quotes: (SQL before it, n - 1), and the tail with `None`.
fn split_placeholders(sql: &str) -> Vec<(&str, Option<usize>)> {
    let bytes = sql.as_bytes();
    let mut pieces = Vec::new();
    let (mut start, mut i, mut quoted) = (0, 0, false);
    while i < bytes.len() {
        match bytes[i] {
            b'\'' => quoted = !quoted,
            b'$' if !quoted && bytes.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                let digits = bytes[i + 1..]
                    .iter()
                    .take_while(|b| b.is_ascii_digit())
                    .count();
                let n: usize = sql[i + 1..i + 1 + digits]
                    .parse()
                    .expect("placeholder digits");
                pieces.push((&sql[start..i], Some(n - 1)));
                i += 1 + digits;
                start = i;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    pieces.push((&sql[start..], None));
    pieces
}

struct Bound<ST, T> {
    value: T,
    st: PhantomData<ST>,
}

impl<ST, T> QueryFragment<Pg> for Bound<ST, T>
where
    Pg: HasSqlType<ST>,
    T: ToSql<ST, Pg>,
{
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        out.push_bind_param::<ST, T>(&self.value)
    }
}

impl QueryFragment<Pg> for Prepared<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        // Each placeholder is sent as the next parameter: a `$n` written twice is bound twice.
        for (sql, bind) in &self.pieces {
            out.push_sql(sql);
            if let Some(n) = bind {
                let value = self.binds.get(*n).ok_or_else(|| {
                    diesel::result::Error::QueryBuilderError(
                        format!("placeholder ${} has no bound value", n + 1).into(),
                    )
                })?;
                value.walk_ast(out.reborrow())?;
            }
        }
        Ok(())
    }
}

impl QueryId for Prepared<'_> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl Query for Prepared<'_> {
    type SqlType = Untyped;
}

impl<Conn> RunQueryDsl<Conn> for Prepared<'_> {}

#[cfg(test)]
mod tests {
    use super::split_placeholders;

    #[test]
    fn comments_are_stripped() {
        let sql = "-- $1: the item's id\nSELECT $1\n  -- indented\nFROM t";
        assert_eq!(super::strip_comments(sql), "SELECT $1\nFROM t");
    }

    #[test]
    fn placeholders_are_found_outside_quotes_only() {
        assert_eq!(
            split_placeholders("SELECT $1, '$2', $10 || $1"),
            vec![
                ("SELECT ", Some(0)),
                (", '$2', ", Some(9)),
                (" || ", Some(0)),
                ("", None)
            ]
        );
        assert_eq!(split_placeholders("SELECT 1"), vec![("SELECT 1", None)]);
    }
}
