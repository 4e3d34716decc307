//! The count-only query (docs/module-semantics.md §8) against the rows themselves. The admin query reads
//! the counts that triggers keep in `instance_module_counts` and never looks at `instances`, which is
//! right only while no deleted instance holds a live row. These check that invariant where rows are
//! written (`record`, `record_many`), that the counts never drift from the rows, and that every
//! caller gets exactly what the join over `instances` gives.

use diesel::connection::SimpleConnection as _;
use diesel::sql_types::Text;
use diesel::{Connection as _, PgConnection, QueryableByName, RunQueryDsl};
use trove_common::db::models::{Instance, InstanceModule};
use trove_tests::TestDb;

const DSV: &str = "(SELECT id FROM datastore_versions LIMIT 1)";

fn instance(conn: &mut PgConnection, id: &str, tenant: &str, cluster: Option<&str>) {
    let cluster = cluster.map_or("NULL".to_owned(), |c| format!("'{c}'"));
    conn.batch_execute(&format!(
        "INSERT INTO instances (id, created, updated, name, task_id, task_description, flavor_id, \
         tenant_id, datastore_version_id, cluster_id, region_id, server_status, deleted) \
         VALUES ('{id}', now(), now(), '{id}', 1, 'No tasks for the instance.', '15', '{tenant}', \
         {DSV}, {cluster}, 'RegionOne', 'ACTIVE', false)"
    ))
    .unwrap();
}

#[derive(QueryableByName, Debug, PartialEq)]
struct Row {
    #[diesel(sql_type = Text)]
    v: String,
}

/// `count_by_md5`'s rows as text, to compare with the reference.
fn shipped(conn: &mut PgConnection, clustered: bool, tenant: Option<&str>) -> Vec<String> {
    InstanceModule::count_by_md5(conn, "mod", "cur", clustered, tenant)
        .unwrap()
        .into_iter()
        .map(|r| {
            format!(
                "{} {} {} {} {}",
                r.module_md5.trim(),
                r.instance_count,
                r.current,
                r.min_updated_date.format("%Y-%m-%d %H:%M:%S%.6f"),
                r.max_updated_date.format("%Y-%m-%d %H:%M:%S%.6f")
            )
        })
        .collect()
}

/// The definition of §8, as a join over `instances`.
fn reference(conn: &mut PgConnection, clustered: bool, tenant: Option<&str>) -> Vec<String> {
    let mut sql = String::from(
        "SELECT trim(im.md5) || ' ' || count(*) || ' ' || (im.md5 = 'cur') || ' ' || \
         to_char(min(im.updated), 'YYYY-MM-DD HH24:MI:SS.US') || ' ' || \
         to_char(max(im.updated), 'YYYY-MM-DD HH24:MI:SS.US') AS v \
         FROM instance_modules im JOIN instances i ON i.id = im.instance_id \
         WHERE im.module_id = 'mod' AND NOT im.deleted AND NOT i.deleted",
    );
    if !clustered {
        sql.push_str(" AND i.cluster_id IS NULL");
    }
    if let Some(t) = tenant {
        sql.push_str(&format!(" AND i.tenant_id = '{t}'"));
    }
    sql.push_str(" GROUP BY im.md5 ORDER BY min(im.updated)");
    diesel::sql_query(sql)
        .load::<Row>(conn)
        .unwrap()
        .into_iter()
        .map(|r| r.v)
        .collect()
}

#[test]
fn deleted_instances_are_never_recorded_and_every_caller_counts_as_the_join_does() {
    let db = TestDb::create().unwrap();
    let mut conn = db.conn();
    conn.batch_execute(&format!(
        "INSERT INTO modules (id, name, type, contents, md5, created, updated) \
         VALUES ('mod', 'm', 'ping', 'x', 'cur', now(), now()); \
         INSERT INTO clusters (id, created, updated, name, task_id, tenant_id, datastore_version_id) \
         VALUES ('c1', now(), now(), 'c1', 1, 'ta', {DSV})"
    ))
    .unwrap();
    // Tenant ta: two plain instances and a cluster member; tenant tb: one instance, deleted later.
    for (id, tenant, cluster) in [
        ("a1", "ta", None),
        ("a2", "ta", None),
        ("m1", "ta", Some("c1")),
        ("b1", "tb", None),
        ("gone", "tb", None),
    ] {
        instance(&mut conn, id, tenant, cluster);
    }
    conn.transaction(|c| {
        assert!(InstanceModule::record(c, "a1", "mod", "old")?);
        assert!(InstanceModule::record(c, "m1", "mod", "old")?);
        assert!(InstanceModule::record(c, "b1", "mod", "cur")?);
        assert!(InstanceModule::record(c, "gone", "mod", "old")?);
        diesel::QueryResult::Ok(())
    })
    .unwrap();
    // Deleting an instance retires its rows; afterwards neither record path revives them.
    conn.transaction(|c| {
        Instance::mark_deleted(c, "gone")?;
        Instance::retire_modules(c, "gone")?;
        diesel::QueryResult::Ok(())
    })
    .unwrap();
    conn.transaction(|c| {
        assert!(!InstanceModule::record(c, "gone", "mod", "cur")?);
        let recorded = InstanceModule::record_many(c, &["gone", "a2", "m1"], "mod", "cur")?;
        assert_eq!(
            recorded,
            ["a2", "m1"].map(String::from).into_iter().collect(),
            "record_many recorded a deleted instance"
        );
        diesel::QueryResult::Ok(())
    })
    .unwrap();
    let live_on_gone = diesel::sql_query(
        "SELECT count(*)::text AS v FROM instance_modules WHERE instance_id = 'gone' AND NOT deleted",
    )
    .load::<Row>(&mut conn)
    .unwrap();
    assert_eq!(live_on_gone, [Row { v: "0".into() }]);

    for tenant in [None, Some("ta"), Some("tb")] {
        for clustered in [true, false] {
            let got = shipped(&mut conn, clustered, tenant);
            assert!(!got.is_empty() || tenant == Some("tb") && !clustered);
            assert_eq!(
                got,
                reference(&mut conn, clustered, tenant),
                "tenant {tenant:?}, include_clustered {clustered}"
            );
        }
    }
    // And the figures themselves, for the admin: a1 old; a2, b1 current; m1 current (a member).
    let admin_all = shipped(&mut conn, true, None);
    let counts: Vec<(&str, &str)> = admin_all
        .iter()
        .map(|r| {
            let mut f = r.split(' ');
            (f.next().unwrap(), f.next().unwrap())
        })
        .collect();
    assert_eq!(counts, [("old", "1"), ("cur", "3")]);
    let admin_plain = shipped(&mut conn, false, None);
    assert!(admin_plain[1].starts_with("cur 2 true"), "{admin_plain:?}");

    // The maintained counts equal a recount after inserts, refreshes, retirements, a hard delete
    // (the foreign key cascades to the rows) and a direct update, whoever writes.
    conn.batch_execute(
        "DELETE FROM instances WHERE id = 'b1'; \
         UPDATE instance_modules SET md5 = 'other' WHERE instance_id = 'a1' AND NOT deleted",
    )
    .unwrap();
    let drift = diesel::sql_query(
        "SELECT coalesce(string_agg(coalesce(c.module_id, r.module_id) || '/' || \
                trim(coalesce(c.md5, r.md5)) || ' counted ' || coalesce(c.instances, 0) || \
                ' live ' || coalesce(r.n, 0), ', '), '') AS v \
         FROM instance_module_counts c FULL JOIN \
              (SELECT module_id, md5, clustered, count(*) AS n FROM instance_modules \
                WHERE NOT deleted GROUP BY 1, 2, 3) r \
           ON (c.module_id, c.md5, c.clustered) = (r.module_id, r.md5, r.clustered) \
         WHERE coalesce(c.instances, 0) <> coalesce(r.n, 0)",
    )
    .load::<Row>(&mut conn)
    .unwrap();
    assert_eq!(drift, [Row { v: String::new() }], "counts drifted");
    assert_eq!(
        shipped(&mut conn, true, None),
        reference(&mut conn, true, None)
    );
}
