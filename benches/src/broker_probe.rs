//! `trove-bench broker`: what this RabbitMQ can take, without any trove service: publish M messages
//! with confirms to Q durable queues (declared like guest queues), persistent or not, then consume
//! and ack them all. It separates the broker's own ceiling from the control plane's costs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use futures_util::StreamExt as _;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Confirmation, Connection, ConnectionProperties, ExchangeKind};
use tokio::sync::Semaphore;

use crate::probe;

/// `trove-bench broker` options.
#[derive(Debug, Args)]
pub struct BrokerArgs {
    /// Messages to publish.
    #[arg(long, default_value_t = 10_000)]
    pub messages: usize,
    /// Queues they are spread over (round robin).
    #[arg(long, default_value_t = 10_000)]
    pub queues: usize,
    /// Body size in bytes (a sealed module_apply of the benchmark's ping module is about 1.5 KB).
    #[arg(long, default_value_t = 1500)]
    pub size: usize,
    /// delivery_mode 2 (persistent) instead of 1.
    #[arg(long)]
    pub persistent: bool,
    /// Publishes awaiting their confirm at once.
    #[arg(long, default_value_t = 1000)]
    pub window: usize,
}

/// Runs the probe and prints one line.
pub async fn run(args: BrokerArgs) -> anyhow::Result<()> {
    let uri = trove_common::amqp::amqp_uri(&trove_tests::transport_url());
    let conn = Connection::connect(&uri, ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let prefix = format!("p{}.", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let exchange = format!("{prefix}x");
    ch.exchange_declare(
        exchange.as_str().into(),
        ExchangeKind::Topic,
        ExchangeDeclareOptions {
            auto_delete: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await?;
    // Classic queues of the default version, as the services declare them. (RabbitMQ 3.10's version-2
    // classic queues keep files open per queue outside its file handle cache: at 10,000 queues a node
    // with the default 1,024 descriptors crashes with emfile.)
    let mut args_q = FieldTable::default();
    args_q.insert("x-expires".into(), AMQPValue::LongLongInt(300_000));
    let names: Vec<String> = (0..args.queues).map(|i| format!("{prefix}q{i}")).collect();
    let t = Instant::now();
    for q in &names {
        ch.queue_declare(
            q.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args_q.clone(),
        )
        .await?;
        ch.queue_bind(
            q.as_str().into(),
            exchange.as_str().into(),
            q.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    }
    let declared = t.elapsed();
    let measured = measure(&args, &conn, &ch, &exchange, &names).await;
    // Always delete the queues: 10,000 durable queues left behind make a broker restart slow.
    for q in &names {
        let _ = ch
            .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    let _ = conn.close(200, "bye".into()).await;
    let (published, nacked, consumed, got, load) = measured?;
    println!(
        "broker probe: {} {} messages of {} B over {} queues, window {}: declare {:.1} s; publish+confirm {:.2} s = {:.0} msg/s ({} not acked); consume+ack {:.2} s = {:.0} msg/s ({} received); load before {load}, after {}",
        args.messages,
        if args.persistent { "persistent" } else { "transient" },
        args.size,
        args.queues,
        args.window,
        declared.as_secs_f64(),
        published.as_secs_f64(),
        args.messages as f64 / published.as_secs_f64(),
        nacked,
        consumed.as_secs_f64(),
        got as f64 / consumed.as_secs_f64(),
        got,
        probe::load()
    );
    Ok(())
}

/// Publishes, then consumes: (publish time, not acked, consume time, received, load before).
async fn measure(
    args: &BrokerArgs,
    conn: &Connection,
    ch: &lapin::Channel,
    exchange: &str,
    names: &[String],
) -> anyhow::Result<(Duration, usize, Duration, usize, String)> {
    let body = vec![b'x'; args.size];
    let props = if args.persistent {
        BasicProperties::default().with_delivery_mode(2)
    } else {
        BasicProperties::default().with_delivery_mode(1)
    };
    let load = probe::load();
    let window = Arc::new(Semaphore::new(args.window.max(1)));
    let t = Instant::now();
    let mut confirms = tokio::task::JoinSet::new();
    for i in 0..args.messages {
        let permit = window.clone().acquire_owned().await?;
        let q = &names[i % names.len()];
        let confirm = ch
            .basic_publish(
                exchange.into(),
                q.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                &body,
                props.clone(),
            )
            .await?;
        confirms.spawn(async move {
            let c = confirm.await;
            drop(permit);
            c
        });
    }
    let mut nacked = 0;
    while let Some(c) = confirms.join_next().await {
        if !matches!(c?, Ok(Confirmation::Ack(None))) {
            nacked += 1;
        }
    }
    let published = t.elapsed();
    // Consume and ack everything (one channel, one consumer per queue).
    let t = Instant::now();
    let cch = conn.create_channel().await?;
    cch.basic_qos(100, BasicQosOptions::default()).await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for q in names {
        let mut consumer = cch
            .basic_consume(
                q.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Some(Ok(d)) = consumer.next().await {
                let _ = d.acker.ack(BasicAckOptions::default()).await;
                let _ = tx.send(());
            }
        });
    }
    drop(tx);
    let mut got = 0;
    while got < args.messages {
        match tokio::time::timeout(Duration::from_secs(60), rx.recv()).await {
            Ok(Some(())) => got += 1,
            _ => break,
        }
    }
    let consumed = t.elapsed();
    Ok((published, nacked, consumed, got, load))
}
