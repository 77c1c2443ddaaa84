//! A database of the test's own: Postgres (a fresh database on `LTH_TEST_DATABASE_URL`'s server,
//! or on a [`crate::PgCluster`]) or SQLite (a file in a temporary folder). Dropped with the value.
//!
//! Creation and dropping run on a private runtime ([`crate::block_on`]), so the same calls work
//! from synchronous tests (lthctl's) and from inside a tokio test.

use sqlx::Connection;

/// Where the tests' Postgres server is: `LTH_TEST_DATABASE_URL`, else the machine's default.
pub fn admin_url() -> String {
    std::env::var("LTH_TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/postgres".into())
}

/// `base` with its database name replaced (query parameters kept).
pub fn with_database(base: &str, name: &str) -> String {
    let (head, query) = match base.split_once('?') {
        Some((h, q)) => (h, Some(q)),
        None => (base, None),
    };
    let after_scheme = head.find("://").map(|i| i + 3).unwrap_or(0);
    let root = match head[after_scheme..].find('/') {
        Some(i) => &head[..after_scheme + i],
        None => head,
    };
    match query {
        Some(q) => format!("{root}/{name}?{q}"),
        None => format!("{root}/{name}"),
    }
}

pub struct TestDb {
    /// What the coordinator's `--db` takes.
    pub url: String,
    /// Postgres: (admin URL, database name), for recreate and drop.
    pg: Option<(String, String)>,
    _dir: Option<tempfile::TempDir>,
}

impl TestDb {
    /// A fresh Postgres database `lth_test_<uuid>` on `LTH_TEST_DATABASE_URL`'s server.
    pub async fn postgres() -> TestDb {
        Self::postgres_named("lth_test")
    }

    /// A fresh Postgres database `{prefix}_<uuid>` on `LTH_TEST_DATABASE_URL`'s server.
    pub async fn create(prefix: &str) -> TestDb {
        Self::postgres_named(prefix)
    }

    /// [`TestDb::create`] for synchronous tests.
    pub fn postgres_named(prefix: &str) -> TestDb {
        Self::postgres_on(&admin_url(), prefix)
    }

    /// A fresh database on the server `admin` points at (e.g. [`crate::PgCluster::url`]).
    pub fn postgres_on(admin: &str, prefix: &str) -> TestDb {
        // A uuid, not pid + time: two tests of one process (cargo test) must never collide.
        let name = format!("{prefix}_{}", uuid::Uuid::new_v4().simple());
        let (a, n) = (admin.to_string(), name.clone());
        crate::block_on(async move {
            let mut conn = sqlx::PgConnection::connect(&a)
                .await
                .unwrap_or_else(|e| panic!("cannot reach the test Postgres at {a} (set LTH_TEST_DATABASE_URL): {e}"));
            sqlx::query(&format!("CREATE DATABASE {n}")).execute(&mut conn).await.expect("create the test database");
            conn.close().await.ok();
        });
        TestDb { url: with_database(admin, &name), pg: Some((admin.to_string(), name)), _dir: None }
    }

    /// A SQLite file in a fresh temporary folder.
    pub async fn sqlite() -> TestDb {
        Self::sqlite_file()
    }

    /// [`TestDb::sqlite`] for synchronous tests.
    pub fn sqlite_file() -> TestDb {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("lth.db").display());
        TestDb { url, pg: None, _dir: Some(dir) }
    }

    pub fn is_postgres(&self) -> bool {
        self.pg.is_some()
    }

    /// A pool on the (Postgres) database, for the test's own queries.
    pub async fn pool(&self) -> sqlx::PgPool {
        assert!(self.is_postgres(), "TestDb::pool is for Postgres databases");
        sqlx::PgPool::connect(&self.url).await.unwrap()
    }

    /// A read-only pool on the (SQLite) database, for the test's own queries: it never takes
    /// the write lock the coordinator's writers wait for.
    pub async fn sqlite_pool(&self) -> sqlx::SqlitePool {
        assert!(!self.is_postgres(), "TestDb::sqlite_pool is for SQLite databases");
        let opts = <sqlx::sqlite::SqliteConnectOptions as std::str::FromStr>::from_str(&self.url).unwrap().read_only(true);
        sqlx::sqlite::SqlitePoolOptions::new().max_connections(2).connect_with(opts).await.unwrap()
    }

    /// Drops the database and creates it empty under the same name (a store reset).
    pub async fn recreate(&self) {
        let (admin, name) = self.pg.clone().expect("recreate is for Postgres databases");
        crate::block_on(async move {
            let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap();
            sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)")).execute(&mut conn).await.unwrap();
            sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await.unwrap();
        });
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some((admin, name)) = self.pg.take() {
            crate::block_on(async move {
                if let Ok(mut c) = sqlx::PgConnection::connect(&admin).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut c).await;
                }
            });
        }
    }
}
