//! The api's transactional outbox.

use diesel::prelude::*;

use crate::db::schema::outbox;

#[derive(Clone, Debug, Queryable, Selectable)]
#[diesel(table_name = outbox)]
pub struct OutboxMessage {
    pub id: i64,
    pub topic: String,
    pub method: String,
    pub body: Vec<u8>,
    pub request_id: String,
    pub created: chrono::NaiveDateTime,
}

impl OutboxMessage {
    /// Queues an encoded message; call inside the transaction that makes the change it announces.
    pub fn push(
        conn: &mut PgConnection,
        topic: &str,
        method: &str,
        body: &[u8],
        request_id: &str,
    ) -> QueryResult<()> {
        diesel::insert_into(outbox::table)
            .values((
                outbox::topic.eq(topic),
                outbox::method.eq(method),
                outbox::body.eq(body),
                outbox::request_id.eq(request_id),
                outbox::created.eq(crate::db::now()),
            ))
            .execute(conn)?;
        Ok(())
    }

    /// Locks up to `n` of the oldest rows, skipping rows another relay holds.
    pub fn lock_batch(conn: &mut PgConnection, n: i64) -> QueryResult<Vec<Self>> {
        outbox::table
            .order(outbox::id)
            .limit(n)
            .for_update()
            .skip_locked()
            .select(Self::as_select())
            .load(conn)
    }

    pub fn delete(conn: &mut PgConnection, ids: &[i64]) -> QueryResult<usize> {
        diesel::delete(outbox::table.filter(outbox::id.eq_any(ids))).execute(conn)
    }
}
