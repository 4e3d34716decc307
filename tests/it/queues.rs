//! Queue durability (issue 14): services' queues survive a broker restart, guests' do not, and a
//! guest queue left durable by an older deployment is used as it is instead of failing the guest.

use lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Connection, ConnectionProperties};
use trove_common::amqp::{amqp_uri, Broker};
use trove_common::config::Settings;

fn settings(prefix: &str) -> Settings {
    let mut s = Settings::default();
    s.default.transport_url = trove_tests::transport_url();
    s.amqp.prefix = prefix.into();
    s.amqp.queue_expires_ms = 5 * 60 * 1000;
    s
}

/// Whether `queue` exists (a passive declaration on a fresh channel).
async fn exists(conn: &Connection, queue: &str) -> bool {
    let ch = conn.create_channel().await.unwrap();
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    ch.queue_declare(queue.into(), passive, FieldTable::default())
        .await
        .is_ok()
}

/// Declares `queue` with `durable`, the arguments the broker layer gives server queues: only a
/// declaration with the same durability succeeds afterwards.
async fn declare_as(conn: &Connection, names_dlx: &str, queue: &str, durable: bool) -> bool {
    let ch = conn.create_channel().await.unwrap();
    let mut args = FieldTable::default();
    args.insert("x-expires".into(), AMQPValue::LongLongInt(5 * 60 * 1000));
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(names_dlx.into()),
    );
    let opts = QueueDeclareOptions {
        durable,
        ..Default::default()
    };
    ch.queue_declare(queue.into(), opts, args).await.is_ok()
}

#[tokio::test]
async fn guest_queues_are_transient_service_queues_durable_and_an_old_durable_guest_queue_is_kept()
{
    let prefix = format!("t{}.", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let s = settings(&prefix);
    let broker = Broker::connect(&s, std::time::Duration::from_secs(10))
        .await
        .unwrap();
    let names = broker.names().clone();
    let conn = Connection::connect(
        &amqp_uri(&trove_tests::transport_url()),
        ConnectionProperties::default(),
    )
    .await
    .unwrap();

    // A new guest queue is not durable, the services' are.
    let guest = names.guest("g-new");
    broker.declare_topic_queue(&guest).await.unwrap();
    assert!(exists(&conn, &guest).await);
    assert!(declare_as(&conn, &names.dead_letter_exchange(), &guest, false).await);
    assert!(!declare_as(&conn, &names.dead_letter_exchange(), &guest, true).await);
    let tm = names.taskmanager();
    broker.declare_topic_queue(&tm).await.unwrap();
    assert!(declare_as(&conn, &names.dead_letter_exchange(), &tm, true).await);
    assert!(!declare_as(&conn, &names.dead_letter_exchange(), &tm, false).await);

    // A guest queue an older deployment declared durable: the guest uses it as it is, and the
    // publishing channel is not hurt by the refused declaration.
    let old = names.guest("g-old");
    assert!(declare_as(&conn, &names.dead_letter_exchange(), &old, true).await);
    broker.declare_topic_queue(&old).await.unwrap();
    broker.cast(&old, b"{}").await.unwrap();
    assert!(declare_as(&conn, &names.dead_letter_exchange(), &old, true).await);

    let ch = conn.create_channel().await.unwrap();
    for q in [&guest, &tm, &old] {
        let _ = ch
            .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    broker.close().await;
}
