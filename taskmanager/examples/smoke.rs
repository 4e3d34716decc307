//! Throwaway smoke driver (temporary; not part of the crate).
use std::sync::Arc;
use std::time::Duration;

use diesel::prelude::*;
use tokio_util::sync::CancellationToken;
use trove_common::amqp::{self, Broker, Outcome};
use trove_common::db::models::instance::Instance;
use trove_common::db::models::{Cluster, DatastoreVersion, ServiceStatusRow};
use trove_common::db::schema::{datastore_versions, datastores};
use trove_common::db::{now, Db, DbError};
use trove_common::rpc::conductor::ConductorMsg;
use trove_common::rpc::keys::{guest_keyring, seal_instance_key, taskmanager_security};
use trove_common::rpc::taskmanager::{ClusterConfig, CreateInstance, FlavorInfo, TaskManagerMsg};
use trove_common::rpc::{
    decode_request, encode_request, from_request, peek_guest_instance_id, to_method_args,
    RpcContext,
};
use trove_common::status::{ClusterTask, InstanceTask, ServiceStatus};

async fn cast(broker: &Broker, settings: &trove_common::config::Settings, msg: &TaskManagerMsg) {
    let (m, a) = to_method_args(msg);
    let body = encode_request(
        &m,
        a,
        &RpcContext::service(),
        "1.0",
        None,
        &taskmanager_security(settings),
    );
    broker
        .cast(&broker.names().taskmanager(), &body)
        .await
        .unwrap();
}

async fn wait<F: Fn(&mut PgConnection) -> bool + Send + Sync + Clone + 'static>(
    db: &Db,
    what: &str,
    f: F,
) {
    for _ in 0..300 {
        let f = f.clone();
        if db.run(move |c| Ok::<_, DbError>(f(c))).await.unwrap() {
            println!("OK: {what}");
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("timed out: {what}");
}

fn new_instance(
    id: &str,
    ver: &DatastoreVersion,
    settings: &trove_common::config::Settings,
    cluster: Option<&str>,
) -> Instance {
    Instance {
        id: id.into(),
        created: now(),
        updated: now(),
        name: id[..8].into(),
        hostname: None,
        compute_instance_id: None,
        server_status: None,
        task_id: InstanceTask::Building.code(),
        task_description: InstanceTask::Building.description().into(),
        task_start_time: Some(now()),
        volume_id: None,
        volume_size: None,
        flavor_id: "15".into(),
        tenant_id: "t1".into(),
        datastore_version_id: ver.id.clone(),
        cluster_id: cluster.map(Into::into),
        shard_id: None,
        instance_type: cluster.map(|_| "member".into()),
        region_id: "RegionOne".into(),
        encrypted_key: seal_instance_key(settings, "abcdefghijklmnopqrstuvwxyz012345"),
        configuration_id: None,
        slave_of_id: None,
        deleted: false,
        deleted_at: None,
    }
}

fn create_msg(id: &str, cluster: Option<&str>) -> TaskManagerMsg {
    TaskManagerMsg::CreateInstance(Box::new(CreateInstance {
        instance_id: id.into(),
        name: "x".into(),
        flavor: FlavorInfo {
            id: "15".into(),
            name: "f".into(),
            ram: 1024,
            vcpus: 1,
            disk: 10,
            ephemeral: 0,
        },
        datastore_manager: "redis".into(),
        ds_version: Some("3.2.6".into()),
        cluster_config: cluster.map(|c| ClusterConfig {
            id: c.into(),
            instance_type: "member".into(),
        }),
        ..Default::default()
    }))
}

#[tokio::main]
async fn main() {
    trove_common::telemetry::init("smoke");
    let settings =
        Arc::new(trove_common::config::load(&["/tmp/tm_smoke/trove.conf".into()]).unwrap());
    let db = Db::new(&settings.database);
    let broker = Broker::connect(&settings, Duration::from_secs(10))
        .await
        .unwrap();
    // mini conductor
    let stop = CancellationToken::new();
    let s2 = settings.clone();
    let db2 = db.clone();
    broker
        .declare_topic_queue(&broker.names().conductor())
        .await
        .unwrap();
    let cond = tokio::spawn(amqp::consume(
        broker.clone(),
        broker.names().conductor(),
        4,
        move |d| {
            let (s, db) = (s2.clone(), db2.clone());
            async move {
                let iid = peek_guest_instance_id(&d.data).unwrap_or_default();
                let sealed = {
                    let i = iid.clone();
                    db.run(move |c| Instance::find_any(c, &i).map_err(DbError::from))
                        .await
                        .unwrap()
                        .and_then(|i| i.encrypted_key)
                };
                let keys = guest_keyring(&s, sealed.as_deref()).unwrap();
                let req = match decode_request(&d.data, keys.as_ref()) {
                    Ok(r) => r,
                    Err(e) => return Outcome::DeadLetter(e.to_string()),
                };
                match from_request::<ConductorMsg>(&req) {
                    Ok(ConductorMsg::Heartbeat {
                        instance_id,
                        payload,
                        ..
                    }) => {
                        let st = ServiceStatus::from_description(&payload.service_status).unwrap();
                        println!("conductor: {instance_id} -> {}", payload.service_status);
                        db.run(move |c| {
                            ServiceStatusRow::set(c, &instance_id, st, false).map_err(DbError::from)
                        })
                        .await
                        .unwrap();
                    }
                    Ok(other) => println!("conductor: {}", other.method()),
                    Err(e) => println!("conductor: bad {e}"),
                }
                Outcome::Ack
            }
        },
        stop.clone(),
    ));

    let ver = db
        .run(|c| {
            datastore_versions::table
                .inner_join(datastores::table)
                .filter(datastores::name.eq("redis"))
                .select(DatastoreVersion::as_select())
                .first::<DatastoreVersion>(c)
                .map_err(DbError::from)
        })
        .await
        .unwrap();
    let mode = std::env::args().nth(1).unwrap_or_default();

    if mode == "instance" || mode.is_empty() {
        let id = uuid::Uuid::new_v4().to_string();
        let inst = new_instance(&id, &ver, &settings, None);
        db.run(move |c| Instance::insert(c, &inst).map_err(DbError::from))
            .await
            .unwrap();
        cast(&broker, &settings, &create_msg(&id, None)).await;
        let i = id.clone();
        wait(&db, "instance task NONE", move |c| {
            Instance::find_any(c, &i).unwrap().unwrap().task_id == InstanceTask::None.code()
        })
        .await;
        let i = id.clone();
        wait(&db, "status running", move |c| {
            ServiceStatusRow::for_instance(c, &i)
                .unwrap()
                .unwrap()
                .status()
                == Some(ServiceStatus::Running)
        })
        .await;
        // redelivered create is harmless
        cast(&broker, &settings, &create_msg(&id, None)).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let pid = std::fs::read_to_string(format!("/tmp/tm_smoke/guests/{id}/guest.pid")).unwrap();
        println!("guest pid {pid}");
        if std::env::args().nth(2).as_deref() == Some("keep") {
            return;
        }
        cast(
            &broker,
            &settings,
            &TaskManagerMsg::DeleteInstance {
                instance_id: id.clone(),
            },
        )
        .await;
        let i = id.clone();
        wait(&db, "instance deleted", move |c| {
            Instance::find_any(c, &i).unwrap().unwrap().deleted
        })
        .await;
        assert!(
            !std::path::Path::new(&format!("/proc/{}", pid.trim())).exists(),
            "guest still running"
        );
        println!("OK: guest process gone");
    }
    if mode == "timeout" {
        // A building instance whose guest never gets prepared: no create cast at all -> times out.
        let id = uuid::Uuid::new_v4().to_string();
        let mut inst = new_instance(&id, &ver, &settings, None);
        inst.task_start_time = Some(now() - chrono::TimeDelta::seconds(61));
        db.run(move |c| Instance::insert(c, &inst).map_err(DbError::from))
            .await
            .unwrap();
        let i = id.clone();
        wait(&db, "timed out", move |c| {
            Instance::find_any(c, &i).unwrap().unwrap().task_id
                == InstanceTask::BuildingErrorTimeoutGa.code()
        })
        .await;
        let i = id.clone();
        wait(&db, "status FAILED_TIMEOUT_GUESTAGENT", move |c| {
            ServiceStatusRow::for_instance(c, &i)
                .unwrap()
                .unwrap()
                .status()
                == Some(ServiceStatus::FailedTimeoutGuestagent)
        })
        .await;
    }
    if mode == "cluster" {
        let cid = uuid::Uuid::new_v4().to_string();
        let cl = Cluster {
            id: cid.clone(),
            created: now(),
            updated: now(),
            name: "c".into(),
            task_id: ClusterTask::Building.code(),
            tenant_id: "t1".into(),
            datastore_version_id: ver.id.clone(),
            configuration_id: None,
            deleted: false,
            deleted_at: None,
        };
        let ids: Vec<String> = (0..3).map(|_| uuid::Uuid::new_v4().to_string()).collect();
        let insts: Vec<Instance> = ids
            .iter()
            .map(|i| new_instance(i, &ver, &settings, Some(&cid)))
            .collect();
        db.run(move |c| {
            Cluster::insert(c, &cl)?;
            for i in &insts {
                Instance::insert(c, i)?;
            }
            Ok::<_, DbError>(())
        })
        .await
        .unwrap();
        for i in &ids {
            cast(&broker, &settings, &create_msg(i, Some(&cid))).await;
        }
        cast(
            &broker,
            &settings,
            &TaskManagerMsg::CreateCluster {
                cluster_id: cid.clone(),
            },
        )
        .await;
        let c2 = cid.clone();
        wait(&db, "cluster task NONE", move |c| {
            Cluster::find(c, &c2, None).unwrap().unwrap().task_id == ClusterTask::None.code()
        })
        .await;
        let c2 = cid.clone();
        wait(&db, "all members running", move |c| {
            let ms = Instance::cluster_members(c, &c2).unwrap();
            ms.iter().all(|m| {
                ServiceStatusRow::for_instance(c, &m.id)
                    .unwrap()
                    .unwrap()
                    .status()
                    == Some(ServiceStatus::Running)
                    && m.task_id == 1
            })
        })
        .await;
        cast(
            &broker,
            &settings,
            &TaskManagerMsg::DeleteCluster {
                cluster_id: cid.clone(),
            },
        )
        .await;
        let c2 = cid.clone();
        wait(&db, "cluster deleted", move |c| {
            Cluster::find(c, &c2, None).unwrap().is_none()
        })
        .await;
        let c2 = cid.clone();
        wait(&db, "members deleted", move |c| {
            Instance::cluster_members(c, &c2).unwrap().is_empty()
        })
        .await;
    }
    if mode == "conductor" { tokio::time::sleep(Duration::from_secs(5)).await; }
    stop.cancel();
    let _ = cond.await;
    broker.close().await;
}
