//! A PostgreSQL schema of the run's own. Approvals are durable, so two
//! runs on one database would otherwise meet each other's pending
//! approvals; each run works in a fresh schema and drops it at the end.

use anyhow::Context as _;
use sqlx::Connection as _;

/// A schema created for this run.
#[derive(Debug)]
pub struct Schema {
    admin_url: String,
    name: String,
}

impl Schema {
    /// Creates a schema with a fresh name on the database at `admin_url`.
    pub fn create(admin_url: &str) -> anyhow::Result<Self> {
        let name = format!("midosoc_bench_{}", uuid::Uuid::now_v7().simple());
        // The name is made of hex digits here, never taken from input.
        run(admin_url, format!("CREATE SCHEMA {name}"))
            .with_context(|| format!("cannot create a schema on {}", redacted(admin_url)))?;
        Ok(Self { admin_url: admin_url.to_owned(), name })
    }

    /// The store URL with this schema first on the search path.
    pub fn url(&self) -> String {
        let separator = if self.admin_url.contains('?') { '&' } else { '?' };
        format!("{}{separator}options=-c%20search_path%3D{}", self.admin_url, self.name)
    }

    /// Drops the schema and everything in it.
    pub fn drop_now(self) -> anyhow::Result<()> {
        run(&self.admin_url, format!("DROP SCHEMA {} CASCADE", self.name))
    }
}

fn run(url: &str, sql: String) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let mut db = sqlx::PgConnection::connect(url).await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut db).await?;
        db.close().await?;
        Ok(())
    })
}

/// `url` without its password, for messages.
fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let user_info = &url[scheme + 3..at];
            let user = user_info.split(':').next().unwrap_or_default();
            format!("{}{user}@{}", &url[..scheme + 3], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_never_reaches_a_message() {
        assert_eq!(redacted("postgres://u:secret@h/db"), "postgres://u@h/db");
        assert_eq!(redacted("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redacted("postgres://h/db"), "postgres://h/db");
    }

    #[test]
    fn the_schema_goes_first_on_the_search_path() {
        let schema =
            Schema { admin_url: "postgres://h/db?sslmode=disable".into(), name: "s".into() };
        assert_eq!(schema.url(), "postgres://h/db?sslmode=disable&options=-c%20search_path%3Ds");
    }
}
