//! Harness pieces shared by the worker's process-level tests (daemon_e2e, dashboard_browser):
//! a throwaway Postgres database, free ports, source modification times.

use sqlx::Connection;
use std::path::Path;

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The latest modification time of any file under `dir`.
pub fn newest_mtime(dir: &Path) -> Option<std::time::SystemTime> {
    let mut newest = None;
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        let t = if p.is_dir() { newest_mtime(&p) } else { e.metadata().and_then(|m| m.modified()).ok() };
        newest = newest.max(t);
    }
    newest
}

/// A database of its own on LTH_TEST_DATABASE_URL's server, dropped with the value.
pub struct TestDb {
    admin: String,
    name: String,
    pub url: String,
}

impl TestDb {
    /// A fresh database named `{prefix}_{pid}_{nanos}`.
    pub async fn create(prefix: &str) -> TestDb {
        let admin = std::env::var("LTH_TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/postgres".into());
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
        let name = format!("{prefix}_{}_{}", std::process::id(), nanos);
        let mut conn = sqlx::PgConnection::connect(&admin).await.expect("connect to LTH_TEST_DATABASE_URL");
        sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await.unwrap();
        let (base, _) = admin.rsplit_once('/').unwrap();
        let url = format!("{base}/{name}");
        TestDb { admin, name, url }
    }

    #[allow(dead_code)] // not every test binary uses it
    pub async fn pool(&self) -> sqlx::PgPool {
        sqlx::PgPool::connect(&self.url).await.unwrap()
    }

    /// Drops the database and creates it empty under the same name (a store reset).
    #[allow(dead_code)]
    pub async fn recreate(&self) {
        let mut conn = sqlx::PgConnection::connect(&self.admin).await.unwrap();
        sqlx::query(&format!("DROP DATABASE {} WITH (FORCE)", self.name)).execute(&mut conn).await.unwrap();
        sqlx::query(&format!("CREATE DATABASE {}", self.name)).execute(&mut conn).await.unwrap();
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let (admin, name) = (self.admin.clone(), self.name.clone());
        // Drop from a thread with its own runtime: we may be inside the test's runtime.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                if let Ok(mut c) = sqlx::PgConnection::connect(&admin).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut c).await;
                }
            })
        })
        .join();
    }
}

