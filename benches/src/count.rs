//! `trove-bench count`: `module-instance-count` latency at a million `instance_modules` rows.
//!
//! 1. A fresh database (cloned from the migrated, seeded template) and the api, taskmanager and
//!    conductor in-process (`trove_tests::TestEnv`); the two modules are created through the API.
//! 2. `count_load.sql` bulk-loads the rows with `generate_series` (layout in that file), then
//!    `VACUUM ANALYZE`, so the visibility map lets index-only scans skip the heap, as autovacuum
//!    would on a live system.
//! 3. For each variant of query and index, side by side in this one run: `EXPLAIN (ANALYZE,
//!    BUFFERS)` of every case (admin / tenant × with / without `include_clustered`), the raw SQL
//!    time (repeated on one connection), and, for the variants the shipped code runs, the latency of
//!    `GET /modules/{id}/instances?count_only=True[&include_clustered=True]` through the API.
//!    Every variant must return exactly the rows the shipped query returns.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use clap::Args;
use diesel::connection::SimpleConnection as _;
use diesel::sql_types::Text;
use diesel::{PgConnection, QueryableByName, RunQueryDsl};
use serde_json::{json, Value};
use trove_common::db::models::InstanceModule;
use trove_tests::TestEnv;

use crate::probe::{self, Summary};

/// `trove-bench count` options.
#[derive(Debug, Args)]
pub struct CountArgs {
    /// instance_modules rows to load (the layout scales with it).
    #[arg(long, default_value_t = 1_000_000)]
    pub rows: u64,
    /// Measured API requests per case, after the warm-up.
    #[arg(long, default_value_t = 50)]
    pub requests: usize,
    /// Warm-up API requests per case.
    #[arg(long, default_value_t = 5)]
    pub warmup: usize,
    /// Raw SQL executions per case and variant.
    #[arg(long, default_value_t = 20)]
    pub sql_runs: usize,
    /// Where to write the full query plans (default: print them).
    #[arg(long)]
    pub plans: Option<std::path::PathBuf>,
}

/// One query shape: the shipped one, or the ones before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Query {
    /// The first version: `JOIN instances` for every caller, with the filters on `i`.
    Join,
    /// The second: admins read `instance_modules` alone (no deleted instance holds a live row),
    /// filtering members on its `clustered` column; tenants keep the join.
    Scan,
    /// `count_by_md5` as shipped: admins read the maintained `instance_module_counts` and take
    /// min/max `updated` by index descents; tenants keep the join.
    Shipped,
}

/// One variant: a query shape and an extra index (created for it, dropped after).
struct Variant {
    name: &'static str,
    query: Query,
    index: Option<&'static str>,
    /// The shipped code runs this query, so measure the API too.
    api: bool,
}

const VARIANTS: [Variant; 3] = [
    Variant {
        name: "A. JOIN instances for every caller",
        query: Query::Join,
        index: None,
        api: false,
    },
    Variant {
        name: "B. admins scan instance_modules alone",
        query: Query::Scan,
        index: None,
        api: false,
    },
    Variant {
        name: "C. shipped: admins read maintained counts",
        query: Query::Shipped,
        index: None,
        api: true,
    },
];

/// One measured call: who asks, and whether cluster members count.
#[derive(Clone, Copy, Debug)]
struct Case {
    admin: bool,
    include_clustered: bool,
}

const CASES: [Case; 4] = [
    Case {
        admin: true,
        include_clustered: true,
    },
    Case {
        admin: true,
        include_clustered: false,
    },
    Case {
        admin: false,
        include_clustered: true,
    },
    Case {
        admin: false,
        include_clustered: false,
    },
];

impl std::fmt::Display for Case {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}, include_clustered={}",
            if self.admin { "admin" } else { "tenant" },
            if self.include_clustered {
                "True"
            } else {
                "False"
            }
        )
    }
}

/// The SQL of a variant and case, with `$1` module id, `$2` module md5 and `$3` tenant.
fn sql(query: Query, case: Case) -> String {
    let head =
        "SELECT im.md5 AS module_md5, count(*) AS instance_count, (im.md5 = $2) AS current, \
                min(im.updated) AS min_updated_date, max(im.updated) AS max_updated_date ";
    let tail = " GROUP BY im.md5 ORDER BY min(im.updated)";
    let members = if case.include_clustered {
        ""
    } else {
        " AND NOT clustered"
    };
    match (query, case.admin) {
        (_, false) | (Query::Join, true) => {
            let mut s = format!(
                "{head}FROM instance_modules im JOIN instances i ON i.id = im.instance_id \
                 WHERE im.module_id = $1 AND NOT im.deleted AND NOT i.deleted"
            );
            if !case.include_clustered {
                s.push_str(" AND i.cluster_id IS NULL");
            }
            if !case.admin {
                s.push_str(" AND i.tenant_id = $3");
            }
            s + tail
        }
        (Query::Scan, true) => format!(
            "{head}FROM instance_modules im WHERE im.module_id = $1 AND NOT im.deleted{members}{tail}"
        ),
        (Query::Shipped, true) => InstanceModule::count_by_md5_sql(case.include_clustered, false),
    }
}

#[derive(QueryableByName)]
struct PlanLine {
    #[diesel(sql_type = Text, column_name = "QUERY PLAN")]
    line: String,
}

/// One result row, as text, to compare variants.
#[derive(QueryableByName, Debug, PartialEq, Eq, Clone)]
struct Row {
    #[diesel(sql_type = Text)]
    module_md5: String,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    instance_count: i64,
    #[diesel(sql_type = diesel::sql_types::Bool)]
    current: bool,
    #[diesel(sql_type = diesel::sql_types::Timestamp)]
    min_updated_date: chrono::NaiveDateTime,
    #[diesel(sql_type = diesel::sql_types::Timestamp)]
    max_updated_date: chrono::NaiveDateTime,
}

fn run_sql(
    conn: &mut PgConnection,
    text: &str,
    module: &Module,
    tenant: &str,
    explain: bool,
) -> anyhow::Result<Result<Vec<Row>, Vec<String>>> {
    // $3 is bound only when the text uses it (PostgreSQL refuses unused parameters' types otherwise).
    let text = if explain {
        format!("EXPLAIN (ANALYZE, BUFFERS) {text}")
    } else {
        text.to_owned()
    };
    let q = diesel::sql_query(text.clone())
        .bind::<Text, _>(&module.id)
        .bind::<Text, _>(&module.md5);
    macro_rules! load {
        ($q:expr) => {
            if explain {
                Err($q
                    .load::<PlanLine>(conn)?
                    .into_iter()
                    .map(|l| l.line)
                    .collect())
            } else {
                Ok($q.load::<Row>(conn)?)
            }
        };
    }
    Ok(if text.contains("$3") {
        load!(q.bind::<Text, _>(tenant))
    } else {
        load!(q)
    })
}

#[derive(Debug, Clone)]
struct Module {
    id: String,
    md5: String,
}

/// Runs the benchmark and prints the report.
pub async fn run(args: CountArgs) -> anyhow::Result<()> {
    ensure!(args.rows >= 1000, "--rows must be at least 1000");
    let env = TestEnv::start().await?;
    let mut conn = env.db.conn();
    let machine = probe::machine(&mut conn);
    let http = reqwest::Client::new();
    // noauth: the token is the user and the project; "admin..." is an admin.
    let admin = format!("admin{}", &uuid::Uuid::new_v4().simple().to_string()[..27]);
    let measured = create_module(&http, &env, &admin, "bench-measured").await?;
    let other = create_module(&http, &env, &admin, "bench-other").await?;

    #[derive(QueryableByName)]
    struct One {
        #[diesel(sql_type = Text)]
        v: String,
    }
    let tenant = diesel::sql_query("SELECT md5('tenant1') AS v")
        .get_result::<One>(&mut conn)?
        .v;
    let dsv = diesel::sql_query(
        "SELECT v.id AS v FROM datastore_versions v JOIN datastores d ON d.id = v.datastore_id \
         WHERE d.name = 'redis' LIMIT 1",
    )
    .get_result::<One>(&mut conn)
    .context("the seeded redis datastore version")?
    .v;

    let rows = args.rows;
    let instances = rows / 2;
    let load = include_str!("count_load.sql")
        .replace("{{dsv}}", &dsv)
        .replace("{{instances}}", &instances.to_string())
        .replace("{{module}}", &measured.id)
        .replace("{{md5}}", &measured.md5)
        .replace("{{retired}}", &(rows / 5).to_string())
        .replace("{{other}}", &other.id)
        .replace("{{other_md5}}", &other.md5)
        .replace("{{other_rows}}", &(rows - instances - rows / 5).to_string());
    let started = Instant::now();
    conn.batch_execute(&load).context("bulk load")?;
    let loaded = started.elapsed();
    let started = Instant::now();
    // One statement per call: several in one string run as one transaction, which VACUUM refuses.
    for table in ["instances", "instance_modules", "clusters"] {
        conn.batch_execute(&format!("VACUUM ANALYZE {table}"))?;
    }
    let vacuumed = started.elapsed();
    #[derive(QueryableByName)]
    struct Counts {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        total: i64,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        live_m: i64,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        insts: i64,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        tenant_insts: i64,
    }
    let counts: Counts = diesel::sql_query(
        "SELECT (SELECT count(*) FROM instance_modules) AS total, \
                (SELECT count(*) FROM instance_modules WHERE module_id = $1 AND NOT deleted) AS live_m, \
                (SELECT count(*) FROM instances) AS insts, \
                (SELECT count(*) FROM instances WHERE tenant_id = $2 AND NOT deleted) AS tenant_insts",
    )
    .bind::<Text, _>(&measured.id)
    .bind::<Text, _>(&tenant)
    .get_result(&mut conn)?;
    ensure!(
        counts.total as u64 == rows,
        "loaded {} rows, wanted {rows}",
        counts.total
    );

    let mut out = String::new();
    writeln!(out, "## trove-bench count")?;
    writeln!(out, "machine: {machine}")?;
    writeln!(
        out,
        "data: {} instance_modules rows ({} live rows of the measured module over 4 md5s, {} retired rows, \
         {} rows of a second module); {} instances (1 % deleted, 5 % cluster members) over 997 tenants; \
         the non-admin tenant owns {} live instances",
        counts.total,
        counts.live_m,
        rows / 5,
        rows - instances - rows / 5,
        counts.insts,
        counts.tenant_insts
    )?;
    writeln!(
        out,
        "load {:.1} s, VACUUM ANALYZE {:.1} s; load average before measuring: {}",
        loaded.as_secs_f64(),
        vacuumed.as_secs_f64(),
        probe::load()
    )?;
    writeln!(out)?;
    writeln!(
        out,
        "| variant | case | SQL p50 / p95 / max ms | API p50 / p95 / max ms | plan (top of EXPLAIN ANALYZE) | load |"
    )?;
    writeln!(out, "|---|---|---|---|---|---|")?;

    let mut plans = String::new();
    let mut reference: Vec<Vec<Row>> = Vec::new();
    for variant in &VARIANTS {
        if let Some(index) = variant.index {
            conn.batch_execute(index)?;
            conn.batch_execute("VACUUM ANALYZE instances")?;
        }
        for (ci, case) in CASES.iter().enumerate() {
            let text = sql(variant.query, *case);
            // Warm the cache the same way for every variant.
            let rows = run_sql(&mut conn, &text, &measured, &tenant, false)?
                .map_err(|_| anyhow::anyhow!("expected rows"))?;
            // The shipped function must agree with our copy of its text, and every variant with it.
            let shipped = InstanceModule::count_by_md5(
                &mut conn,
                &measured.id,
                &measured.md5,
                case.include_clustered,
                (!case.admin).then_some(tenant.as_str()),
            )?;
            ensure!(
                shipped.len() == rows.len()
                    && shipped
                        .iter()
                        .zip(&rows)
                        .all(|(s, r)| s.module_md5 == r.module_md5
                            && s.instance_count == r.instance_count
                            && s.current == r.current
                            && s.min_updated_date == r.min_updated_date
                            && s.max_updated_date == r.max_updated_date),
                "{}: {case}: the rows differ from count_by_md5's",
                variant.name
            );
            if reference.len() <= ci {
                reference.push(rows.clone());
            }
            ensure!(
                reference[ci] == rows,
                "{}: {case}: rows differ",
                variant.name
            );
            let plan = run_sql(&mut conn, &text, &measured, &tenant, true)?
                .err()
                .unwrap_or_default();
            writeln!(
                plans,
                "### {} — {case}\n\n```text\n{}\n```\n",
                variant.name,
                plan.join("\n")
            )?;
            let mut sql_ms = Vec::with_capacity(args.sql_runs);
            for _ in 0..args.sql_runs {
                let t = Instant::now();
                let rows = run_sql(&mut conn, &text, &measured, &tenant, false)?;
                ensure!(rows.is_ok(), "expected rows");
                sql_ms.push(probe::ms(t.elapsed()));
            }
            let api = if variant.api {
                let token = if case.admin { &admin } else { &tenant };
                Some(api_latency(&http, &env, token, &measured, *case, &args).await?)
            } else {
                None
            };
            writeln!(
                out,
                "| {} | {case} | {} | {} | {} | {} |",
                variant.name,
                triple(&Summary::of(&sql_ms).expect("runs > 0")),
                api.as_ref().map_or("(code not shipped)".into(), triple),
                plan_digest(&plan),
                probe::load()
            )?;
        }
        if let Some(index) = variant.index {
            let name = index.split_whitespace().nth(2).context("index name")?;
            conn.batch_execute(&format!("DROP INDEX {name}"))?;
        }
    }
    writeln!(out)?;
    writeln!(out, "result rows (admin, include_clustered=True):")?;
    for r in &reference[0] {
        writeln!(
            out,
            "  {} count {} current {} min {} max {}",
            r.module_md5, r.instance_count, r.current, r.min_updated_date, r.max_updated_date
        )?;
    }
    print!("{out}");
    match &args.plans {
        Some(path) => {
            std::fs::write(path, &plans).with_context(|| format!("writing {}", path.display()))?;
            println!("plans written to {}", path.display());
        }
        None => print!("{plans}"),
    }
    Ok(())
}

fn triple(s: &Summary) -> String {
    format!("{:.1} / {:.1} / {:.1}", s.p50, s.p95, s.max)
}

/// The plan's node names, outermost first, and its execution time.
fn plan_digest(plan: &[String]) -> String {
    let re = regex::Regex::new(
        r"^\s*(?:->\s*)?([A-Z][A-Za-z ]+?)(?: using (\S+))?(?: on (\S+)(?: \w+)?)?\s+\(cost",
    )
    .expect("valid regex");
    let nodes: Vec<String> = plan
        .iter()
        .filter_map(|l| re.captures(l))
        .map(|c| {
            let mut s = c[1].trim().to_owned();
            if let Some(ix) = c.get(2) {
                s.push_str(&format!(" using {}", ix.as_str()));
            } else if let Some(t) = c.get(3) {
                s.push_str(&format!(" on {}", t.as_str()));
            }
            s
        })
        .filter(|n| {
            !matches!(
                n.as_str(),
                "Sort" | "Gather Merge" | "Finalize GroupAggregate"
            )
        })
        .collect();
    let exec = plan
        .iter()
        .find_map(|l| l.trim().strip_prefix("Execution Time: "))
        .unwrap_or("?");
    format!("{} — exec {exec}", nodes.join(" → "))
}

async fn create_module(
    http: &reqwest::Client,
    env: &TestEnv,
    admin: &str,
    name: &str,
) -> anyhow::Result<Module> {
    use base64::Engine as _;
    let body = json!({"module": {
        "name": name, "module_type": "ping",
        "contents": base64::engine::general_purpose::STANDARD.encode(format!("message={name}\n")),
        "all_tenants": 1, "visible": 1, "auto_apply": 0, "live_update": 0,
    }});
    let resp = http
        .post(format!("{}/modules", env.base(admin)))
        .header("X-Auth-Token", admin)
        .json(&body)
        .send()
        .await?;
    let status = resp.status();
    let v: Value = resp.json().await?;
    if !status.is_success() {
        bail!("module-create {name}: {status} {v}");
    }
    let m = &v["module"];
    Ok(Module {
        id: m["id"].as_str().context("module id")?.to_owned(),
        md5: m["md5"].as_str().context("module md5")?.to_owned(),
    })
}

async fn api_latency(
    http: &reqwest::Client,
    env: &TestEnv,
    token: &str,
    module: &Module,
    case: Case,
    args: &CountArgs,
) -> anyhow::Result<Summary> {
    let mut url = format!(
        "{}/modules/{}/instances?count_only=True",
        env.base(token),
        module.id
    );
    if case.include_clustered {
        url.push_str("&include_clustered=True");
    }
    let mut ms = Vec::with_capacity(args.requests);
    for i in 0..args.warmup + args.requests {
        let t = Instant::now();
        let resp = http
            .get(&url)
            .header("X-Auth-Token", token)
            .timeout(Duration::from_secs(60))
            .send()
            .await?;
        let status = resp.status();
        let body: Value = resp.json().await?;
        let elapsed = t.elapsed();
        ensure!(status.is_success(), "{url}: {status} {body}");
        ensure!(
            body["instances"].as_array().is_some(),
            "{url}: no instances array in {body}"
        );
        if i >= args.warmup {
            ms.push(probe::ms(elapsed));
        }
    }
    Summary::of(&ms).context("no requests measured")
}
