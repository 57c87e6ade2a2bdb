//! End-to-end: two `midosoc serve` processes on one PostgreSQL database.
//! A request held on the first is approved through the second's review
//! API and completes; the time from the decision to the release is
//! printed for decisions on the same instance and across instances.
//!
//! The database comes from `MIDOSOC_TEST_POSTGRES_URL`; each run uses a
//! fresh schema, dropped at the end.

#[path = "support/mod.rs"]
#[allow(unreachable_pub, reason = "shared helpers are `pub` for every suite")]
mod support;

#[path = "common/instance.rs"]
mod instance;

use std::time::{Duration, Instant};

use instance::{CountingUpstream, Instance, Setup, decide, eventually, pending, upstream_table};
use sqlx::Connection as _;

/// Decisions timed per kind.
const ITERATIONS: usize = 20;

/// A schema created for one test and dropped after it.
struct Schema {
    admin_url: String,
    name: String,
}

impl Schema {
    async fn create(admin_url: &str) -> Self {
        let name = format!("midosoc_gw_{}", uuid::Uuid::now_v7().simple());
        let mut db = sqlx::PgConnection::connect(admin_url).await.expect("postgres reachable");
        // The name is made here of hex digits, never taken from input.
        let sql = sqlx::AssertSqlSafe(format!("CREATE SCHEMA {name}"));
        sqlx::raw_sql(sql).execute(&mut db).await.unwrap();
        db.close().await.unwrap();
        Self { admin_url: admin_url.to_owned(), name }
    }

    /// The store URL with this schema first on the search path.
    fn url(&self) -> String {
        let separator = if self.admin_url.contains('?') { '&' } else { '?' };
        format!("{}{separator}options=-c%20search_path%3D{}", self.admin_url, self.name)
    }

    async fn drop(self) {
        let mut db = sqlx::PgConnection::connect(&self.admin_url).await.expect("postgres");
        sqlx::query("SET lock_timeout = '10s'").execute(&mut db).await.unwrap();
        let sql = sqlx::AssertSqlSafe(format!("DROP SCHEMA {} CASCADE", self.name));
        sqlx::raw_sql(sql).execute(&mut db).await.unwrap();
    }
}

/// Holds `DELETE path` on `holder`, decides it on `decider`, and returns
/// the time from the decision's answer to the agent's response.
async fn decision_to_release(
    client: &reqwest::Client,
    holder: &Instance,
    decider: &Instance,
    key: &str,
    admin: &str,
    path: &str,
) -> Duration {
    let request = client.delete(holder.agent(path)).bearer_auth(key).send();
    let held = tokio::spawn(request);
    let id = eventually("the approval to be pending", || async {
        let list = pending(client, decider, admin).await;
        list.first().and_then(|a| a["id"].as_str()).map(str::to_owned)
    })
    .await;

    assert_eq!(decide(client, decider, admin, &id, "approve").await, 200);
    let decided = Instant::now();
    let reply = held.await.expect("task").expect("the held request completes");
    let released = decided.elapsed();
    assert_eq!(reply.status(), 200);
    released
}

fn summary(mut times: Vec<Duration>) -> String {
    times.sort_unstable();
    let p50 = times[times.len() / 2];
    let max = times[times.len() - 1];
    format!("p50 {:.1} ms, max {:.1} ms", p50.as_secs_f64() * 1e3, max.as_secs_f64() * 1e3)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_on_one_instance_releases_a_request_held_on_another() {
    let Ok(admin_url) = std::env::var("MIDOSOC_TEST_POSTGRES_URL") else {
        support::skip("gateway_postgres", "PostgreSQL", "MIDOSOC_TEST_POSTGRES_URL is unset");
        return;
    };
    let schema = Schema::create(&admin_url).await;
    let (upstream, addr) = CountingUpstream::start().await;
    let store = format!("[store]\nurl = {:?}\n", schema.url());
    let one = Setup::new(&format!("{store}{}", upstream_table(addr)));
    let two = Setup::new(&format!("{store}{}", upstream_table(addr)));
    let client = reqwest::Client::new();

    // Identities are per instance (each has its data directory); the
    // approvals are shared.
    let first = Instance::start(&one.config);
    let second = Instance::start(&two.config);
    let key = one.add_agent("cleanup-bot");
    let admin_one = first.admin_token.clone().expect("admin token");
    let admin_two = second.admin_token.clone().expect("admin token");

    let released =
        decision_to_release(&client, &first, &second, &key, &admin_two, "/api/customers/0").await;
    assert_eq!(upstream.count("DELETE /customers/0"), 1);
    eprintln!("first cross-instance release: {:.1} ms", released.as_secs_f64() * 1e3);

    let mut same = Vec::new();
    let mut across = Vec::new();
    for i in 1..=ITERATIONS {
        let path = format!("/api/same/{i}");
        same.push(decision_to_release(&client, &first, &first, &key, &admin_one, &path).await);
        let path = format!("/api/across/{i}");
        across.push(decision_to_release(&client, &first, &second, &key, &admin_two, &path).await);
    }
    eprintln!("decision to release, same instance:   {}", summary(same));
    eprintln!("decision to release, across instances: {}", summary(across));

    first.kill();
    second.kill();
    schema.drop().await;
}
