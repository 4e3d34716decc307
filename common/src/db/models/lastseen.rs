//! `conductor_lastseen`: drops guest reports older than the last one seen (Trove's `_message_too_old`).

use diesel::prelude::*;
use diesel::sql_types::{Double, Text};

/// Records `sent` for (instance, method) and says whether the report is new. An earlier-or-equal
/// `sent` returns false and changes nothing.
pub fn accept(
    conn: &mut PgConnection,
    instance_id: &str,
    method: &str,
    sent: f64,
) -> QueryResult<bool> {
    let n = crate::db::prepared(
        "INSERT INTO conductor_lastseen (instance_id, method_name, sent) VALUES ($1, $2, $3)
         ON CONFLICT (instance_id, method_name) DO UPDATE SET sent = excluded.sent
         WHERE excluded.sent > conductor_lastseen.sent",
    )
    .bind::<Text, _>(instance_id)
    .bind::<Text, _>(method)
    .bind::<Double, _>(sent)
    .execute(conn)?;
    Ok(n == 1)
}
