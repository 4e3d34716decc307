//! Per-guest broker credentials (issue 16): each instance's guest logs in to RabbitMQ as a user of
//! its own, created by the taskmanager before the guest first starts and removed when the instance is
//! deleted, which may consume only its own queue and publish only to the conductor and to callers'
//! reply queues. These tests log in with a guest's credentials (read from its `guest.conf`) and try
//! what a compromised guest would, against the real broker; the broker's refusals are RabbitMQ's
//! `ACCESS_REFUSED` (403).

use std::os::unix::fs::PermissionsExt as _;
use std::time::Duration;

use lapin::options::{BasicConsumeOptions, BasicPublishOptions, QueueBindOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use trove_common::amqp::permissions::GuestPermissions;
use trove_common::amqp::{amqp_uri, Names};
use trove_common::config::GuestBrokerCredentials;
use trove_common::epoch_now;
use trove_tests::{
    http, instance_create, ok, prop, sigkill_guest, wait_active, Management, TestEnv,
};

/// A 32-character project id (an ordinary member, not admin).
const TENANT: &str = "c7ed5e4a1b2c3d4e5f60718293a4b5c6";
/// How long a build may take on a shared machine.
const BUILD: Duration = Duration::from_secs(90);

/// The `transport_url` in the instance's `guest.conf`.
fn guest_url(env: &TestEnv, id: &str) -> String {
    let conf = env.state_dir.path().join(id).join("guest.conf");
    trove_common::config::read_file(&conf)
        .unwrap_or_else(|e| panic!("{}: {e}", conf.display()))
        .default
        .transport_url
}

/// The user and password of a `transport_url`.
fn credentials(url: &str) -> (String, String) {
    let uri: lapin::uri::AMQPUri = amqp_uri(url).parse().unwrap();
    (
        uri.authority.userinfo.username,
        uri.authority.userinfo.password,
    )
}

/// RabbitMQ's `ACCESS_REFUSED` (reply code 403), whether it closed a channel or the connection.
fn access_refused(e: &lapin::Error) -> bool {
    matches!(e.kind(), lapin::ErrorKind::ProtocolError(amqp) if amqp.get_id() == 403)
}

/// Asserts that the broker refused an operation with `ACCESS_REFUSED`.
fn assert_refused<T: std::fmt::Debug>(what: &str, res: Result<T, lapin::Error>) {
    match res {
        Err(e) => assert!(
            access_refused(&e),
            "{what}: expected ACCESS_REFUSED, got {e}"
        ),
        Ok(v) => panic!("{what}: the broker allowed it ({v:?})"),
    }
}

/// Publishes with `mandatory` on a confirm channel of `conn` and waits for the broker's answer.
async fn publish(
    conn: &Connection,
    exchange: &str,
    key: &str,
) -> Result<lapin::Confirmation, lapin::Error> {
    let ch = conn.create_channel().await?;
    ch.confirm_select(Default::default()).await?;
    let opts = BasicPublishOptions {
        mandatory: true,
        ..Default::default()
    };
    ch.basic_publish(
        exchange.into(),
        key.into(),
        opts,
        b"{}",
        BasicProperties::default(),
    )
    .await?
    .await
}

/// Binds `queue` to `exchange` with `key` on a fresh channel of `conn`.
async fn bind(
    conn: &Connection,
    queue: &str,
    exchange: &str,
    key: &str,
) -> Result<(), lapin::Error> {
    let ch = conn.create_channel().await?;
    ch.queue_bind(
        queue.into(),
        exchange.into(),
        key.into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
}

/// Deletes the instance through the CLI and waits until the API no longer shows it.
async fn delete_and_wait_gone(env: &TestEnv, id: &str) {
    ok(&env.trove(TENANT, &["delete", id]).await);
    trove_tests::eventually(BUILD, &format!("instance {id} gone"), || async {
        let (status, _) = http(
            env,
            TENANT,
            reqwest::Method::GET,
            &format!("/instances/{id}"),
            None,
        )
        .await;
        (status == 404).then_some(())
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_can_do_its_own_work_and_nothing_else_and_its_user_goes_with_the_instance() {
    let env = TestEnv::start().await.unwrap();
    let names = Names::new(&env.settings);
    let mgmt = Management::for_settings(&env.settings);
    let a = instance_create(&env, TENANT, "creds-a", &[]).await;
    let b = instance_create(&env, TENANT, "creds-b", &[]).await;
    // ACTIVE: each guest logged in as its own user, declared and bound its queue, took its prepare
    // and heartbeats reach the conductor.
    wait_active(&env, TENANT, &a, BUILD).await;
    wait_active(&env, TENANT, &b, BUILD).await;

    // Each guest.conf holds its own user with a password of its own, not the shared credentials.
    let (user_a, pass_a) = credentials(&guest_url(&env, &a));
    let (user_b, pass_b) = credentials(&guest_url(&env, &b));
    assert_eq!(user_a, names.guest_user(&a));
    assert_eq!(user_b, names.guest_user(&b));
    assert_eq!(pass_a.len(), 32);
    assert_ne!(pass_a, pass_b);
    assert_ne!(credentials(&env.settings.default.transport_url).0, user_a);

    // The broker holds exactly the permissions GuestPermissions describes.
    let expected = GuestPermissions::new(&names, &a);
    let (status, perms) = mgmt
        .get(&format!(
            "users/{}/permissions",
            trove_tests::encode(&user_a)
        ))
        .await;
    assert_eq!(status, 200, "{perms}");
    assert_eq!(perms.as_array().map(Vec::len), Some(1), "{perms}");
    assert_eq!(perms[0]["configure"], expected.configure.as_str());
    assert_eq!(perms[0]["write"], expected.write.as_str());
    assert_eq!(perms[0]["read"], expected.read.as_str());
    let (status, topic) = mgmt
        .get(&format!(
            "users/{}/topic-permissions",
            trove_tests::encode(&user_a)
        ))
        .await;
    assert_eq!(status, 200, "{topic}");
    assert_eq!(topic[0]["exchange"], names.exchange().as_str(), "{topic}");
    assert_eq!(topic[0]["write"], expected.topic_write.as_str());
    assert_eq!(topic[0]["read"], expected.topic_read.as_str());

    // Logged in as guest A, as a compromised guest image would.
    let conn = Connection::connect(
        &amqp_uri(&guest_url(&env, &a)),
        ConnectionProperties::default(),
    )
    .await
    .expect("guest A's credentials log in");
    let (own, other) = (names.guest(&a), names.guest(&b));
    // Its own queue, with its own key: allowed (so the refusals below are the permissions').
    bind(&conn, &own, &names.exchange(), &own)
        .await
        .expect("binding its own queue");

    let ch = conn.create_channel().await.unwrap();
    assert_refused(
        "consuming another guest's queue",
        ch.basic_consume(
            other.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await,
    );
    let ch = conn.create_channel().await.unwrap();
    assert_refused(
        "basic.get on another guest's queue",
        ch.basic_get(other.as_str().into(), Default::default())
            .await,
    );
    assert_refused(
        "publishing to the taskmanager's key",
        publish(&conn, &names.exchange(), &names.taskmanager()).await,
    );
    assert_refused(
        "publishing to the taskmanager's queue through the default exchange",
        publish(&conn, "", &names.taskmanager()).await,
    );
    assert_refused(
        "publishing to another guest's key",
        publish(&conn, &names.exchange(), &other).await,
    );
    for key in [other.as_str(), &names.taskmanager(), "#"] {
        assert_refused(
            &format!("binding its queue to key {key}"),
            bind(&conn, &own, &names.exchange(), key).await,
        );
    }
    let ch = conn.create_channel().await.unwrap();
    assert_refused(
        "declaring the control exchange",
        ch.exchange_declare(
            names.exchange().as_str().into(),
            lapin::ExchangeKind::Topic,
            lapin::options::ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await,
    );
    let ch = conn.create_channel().await.unwrap();
    assert_refused(
        "deleting another guest's queue",
        ch.queue_delete(other.as_str().into(), Default::default())
            .await,
    );
    let _ = conn.close(200, "done".into()).await;

    // Guest A still does all its own work: heartbeats after all that, a module applied through the
    // API (a cast to it, its result cast to the conductor) and listed (a call: its reply goes to the
    // api's reply queue through the control exchange).
    let after = epoch_now();
    trove_tests::eventually(BUILD, "a heartbeat from guest A", || async {
        (env.last_heartbeat(&a) > after).then_some(())
    })
    .await
    .unwrap();
    let files = tempfile::tempdir().unwrap();
    std::fs::write(files.path().join("ping.dat"), b"message=mine\n").unwrap();
    let out = env
        .trove_in(
            TENANT,
            &[
                "module-create",
                "credmod",
                "ping",
                "ping.dat",
                "--live_update",
            ],
            Some(files.path()),
        )
        .await;
    ok(&out);
    ok(&env.trove(TENANT, &["module-apply", &a, "credmod"]).await);
    trove_tests::eventually(
        BUILD,
        "module-query of A listing credmod as applied",
        || async {
            let out = env.trove(TENANT, &["module-query", &a]).await;
            (out.status == 0 && out.stdout.contains("credmod") && out.stdout.contains("OK"))
                .then_some(())
        },
    )
    .await
    .unwrap();
    wait_active(&env, TENANT, &a, BUILD).await;

    // Deleting A removes its user (the broker answers 404), and only its. A's own URL, from its
    // guest.conf, logs in before the delete and no longer after it.
    let url_a = guest_url(&env, &a);
    let before = Connection::connect(&amqp_uri(&url_a), ConnectionProperties::default())
        .await
        .expect("A's credentials log in while A lives");
    let _ = before.close(200, "bye".into()).await;
    assert_eq!(mgmt.user_status(&user_a).await, 200);
    delete_and_wait_gone(&env, &a).await;
    assert_eq!(mgmt.user_status(&user_a).await, 404);
    assert_eq!(mgmt.user_status(&user_b).await, 200);
    let gone = Connection::connect(&amqp_uri(&url_a), ConnectionProperties::default()).await;
    assert!(
        gone.is_err(),
        "A's credentials still log in after its delete"
    );
    wait_active(&env, TENANT, &b, BUILD).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relaunched_guest_keeps_its_password() {
    let env = TestEnv::start().await.unwrap();
    let mgmt = Management::for_settings(&env.settings);
    let id = instance_create(&env, TENANT, "relaunched", &[]).await;
    wait_active(&env, TENANT, &id, BUILD).await;
    let before = guest_url(&env, &id);
    let (user, _) = credentials(&before);

    // The guest is killed; the taskmanager starts it again, rewriting guest.conf with the same
    // password (the user written again with it), and the guest logs in again.
    let old = sigkill_guest(env.state_dir.path(), &id).await;
    trove_tests::eventually(BUILD, "the guest started again", || async {
        trove_tests::guest_pid(env.state_dir.path(), &id)
            .filter(|&pid| pid != old && trove_tests::process_alive(pid))
    })
    .await
    .unwrap();
    let relaunched = epoch_now();
    trove_tests::eventually(BUILD, "a heartbeat from the relaunched guest", || async {
        (env.last_heartbeat(&id) > relaunched).then_some(())
    })
    .await
    .unwrap();
    assert_eq!(
        guest_url(&env, &id),
        before,
        "the relaunch kept the password"
    );
    assert_eq!(mgmt.user_status(&user).await, 200);
    delete_and_wait_gone(&env, &id).await;
    assert_eq!(mgmt.user_status(&user).await, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_whose_guest_exits_at_start_loses_its_user_when_deleted() {
    let tmp = tempfile::tempdir().unwrap();
    let broken = tmp.path().join("broken-guestagent");
    std::fs::write(&broken, "#!/bin/sh\necho 'cannot start' >&2\nexit 1\n").unwrap();
    std::fs::set_permissions(&broken, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = broken.to_string_lossy().into_owned();
    let env = TestEnv::start_with(move |s| s.compute.guestagent_path = path)
        .await
        .unwrap();
    let mgmt = Management::for_settings(&env.settings);
    let id = instance_create(&env, TENANT, "exits", &[]).await;
    trove_tests::eventually(BUILD, "the build failed", || async {
        let out = env.trove(TENANT, &["show", &id]).await;
        (out.status == 0 && prop(&out.stdout, "status") == "ERROR").then_some(())
    })
    .await
    .unwrap();
    // The user was created before the guest was started, and outlives the failed build...
    let user = Names::new(&env.settings).guest_user(&id);
    assert_eq!(mgmt.user_status(&user).await, 200);
    // ...until the instance is deleted.
    delete_and_wait_gone(&env, &id).await;
    assert_eq!(mgmt.user_status(&user).await, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_members_get_users_of_their_own_and_lose_them_with_the_cluster() {
    const ADMIN: &str = "admin0c7ed5e4a1b2c3d4e5f60718293";
    let env = TestEnv::start().await.unwrap();
    let mgmt = Management::for_settings(&env.settings);
    let names = Names::new(&env.settings);
    let out = env
        .trove(
            ADMIN,
            &[
                "cluster-create",
                "credc",
                "redis",
                "3.2.6",
                "--instance",
                "flavor=15,volume=1",
                "--instance",
                "flavor=15,volume=1",
            ],
        )
        .await;
    let cluster = prop(ok(&out), "id");
    let members = env.query_strings(&format!(
        "SELECT id AS v FROM instances WHERE cluster_id = '{cluster}' ORDER BY id"
    ));
    assert_eq!(members.len(), 2);
    trove_tests::eventually(BUILD, "cluster built (task NONE)", || async {
        let out = env.trove(ADMIN, &["cluster-show", "credc"]).await;
        (out.status == 0 && prop(&out.stdout, "task_name") == "NONE").then_some(())
    })
    .await
    .unwrap();
    for m in &members {
        assert_eq!(credentials(&guest_url(&env, m)).0, names.guest_user(m));
        assert_eq!(
            mgmt.user_status(&names.guest_user(m)).await,
            200,
            "member {m}"
        );
    }
    ok(&env.trove(ADMIN, &["cluster-delete", "credc"]).await);
    for m in &members {
        let user = names.guest_user(m);
        trove_tests::eventually(BUILD, &format!("member {m}'s user removed"), || async {
            (mgmt.user_status(&user).await == 404).then_some(())
        })
        .await
        .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_shared_credentials_guests_log_in_as_the_transport_url_user() {
    let env = TestEnv::start_with(|s| {
        s.default.guest_broker_credentials = GuestBrokerCredentials::Shared;
    })
    .await
    .unwrap();
    let id = instance_create(&env, TENANT, "shared", &[]).await;
    wait_active(&env, TENANT, &id, BUILD).await;
    assert_eq!(guest_url(&env, &id), env.settings.default.transport_url);
    let user = Names::new(&env.settings).guest_user(&id);
    let mgmt = Management::for_settings(&env.settings);
    assert_eq!(mgmt.user_status(&user).await, 404, "no user of its own");
}
