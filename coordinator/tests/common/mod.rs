//! Test databases (lth-testkit's: a fresh Postgres database per test, dropped afterwards, or a
//! fresh SQLite file) with the coordinator's store on them, and small helpers shared by the
//! contract and gRPC tests.
#![allow(dead_code)]

use lth_coordinator::store::{ClaimedJob, LayerResult, LevelResult, Lease, Store, StoreOptions, WorkerRegistration};
use lth_sweep::SweepSpec;
use sqlx::Row;

/// The lease every contract test claims with.
pub const LEASE: std::time::Duration = std::time::Duration::from_secs(30);

/// The lease a claim returned.
pub fn lease_of(c: &ClaimedJob) -> Lease {
    Lease { job_id: c.job.id, attempt: c.job.attempt }
}

/// `contract!(test_a, test_b)`: each `async fn test_x(store: Store)` of the calling file runs as
/// a test on a fresh Postgres database (`postgres::test_x`) and on a fresh SQLite file
/// (`sqlite::test_x`). Needs `#[macro_use] mod common;`.
#[allow(unused_macros)]
macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let db = super::TestDb::postgres().await;
                    super::$name(db.store().await).await;
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let db = super::TestDb::sqlite().await;
                    super::$name(db.store().await).await;
                }
            )*
        }
    };
}

/// lth-testkit's test database (a fresh Postgres database or SQLite file), plus the
/// coordinator's store on it.
pub struct TestDb(pub lth_testkit::TestDb);

impl std::ops::Deref for TestDb {
    type Target = lth_testkit::TestDb;
    fn deref(&self) -> &lth_testkit::TestDb {
        &self.0
    }
}

impl TestDb {
    pub async fn postgres() -> TestDb {
        TestDb(lth_testkit::TestDb::postgres().await)
    }

    pub async fn sqlite() -> TestDb {
        TestDb(lth_testkit::TestDb::sqlite().await)
    }

    /// The coordinator's store on this database, migrated.
    pub async fn store(&self) -> Store {
        Store::connect(&self.url, &StoreOptions::default()).await.expect("connect and migrate")
    }
}

/// A digits sweep named "test" (two epochs, lr 0.1) over the given grid.
pub fn spec(metrics: &[&str], rates: &[f64], seeds: &[u64], levels: u32) -> SweepSpec {
    let mut s = lth_testkit::DigitsSweep::new("test").metrics(metrics).rates(rates).seeds(seeds).levels(levels).length("2ep").lr(0.1);
    // The recipe these tests were written with: the engine's defaults but for length and lr.
    (s.max_attempts, s.batch_size, s.momentum, s.rewind, s.checkpoint_every) = (None, None, None, None, None);
    s.spec()
}

pub fn worker_registration(worker_id: &str) -> WorkerRegistration {
    WorkerRegistration {
        worker_id: worker_id.into(),
        host: "test-host".into(),
        gpus: vec![],
        cpus: 2,
        slots: 4,
        libtorch_version: "2.11.0".into(),
        cuda_version: String::new(),
    }
}

pub async fn register(store: &Store, worker_id: &str) {
    store.register_worker(&worker_registration(worker_id)).await.unwrap();
}

/// Packs bits MSB-first.
pub fn pack(bits: &[bool]) -> Vec<u8> {
    let mut out = vec![0u8; bits.len().div_ceil(8)];
    for (i, &b) in bits.iter().enumerate() {
        if b {
            out[i / 8] |= 0x80 >> (i % 8);
        }
    }
    out
}

/// A plausible result for a job: two layers of 16 and 12 weights, pruned at the job's rate per
/// level, with a mask that depends on the metric (so tickets of different metrics differ).
pub fn fabricated_result(job: &ClaimedJob) -> LevelResult {
    let j = &job.job;
    let keep = (1.0 - j.rate).powi(j.level);
    let salt = j.metric.as_deref().map(|m| m.len()).unwrap_or(0);
    let layer = |name: &str, total: usize, collapse: bool| {
        let kept = if collapse { 0 } else { ((total as f64) * keep).round().max(1.0) as usize };
        let bits: Vec<bool> = (0..total).map(|i| ((i + salt) % total) < kept).collect();
        LayerResult { name: name.into(), kept: kept as u64, total: total as u64, bits: pack(&bits), collapsed: collapse, weight_norm: 1.5, units: None }
    };
    LevelResult {
        sparsity: 1.0 - keep,
        test_accuracy: 0.9 - 0.01 * j.level as f64 - 0.001 * j.seed as f64,
        test_loss: 0.3,
        train_loss: 0.2,
        epochs: 2.0,
        wall_seconds: 1.0,
        iterations: 100,
        layers: vec![layer("fc1.weight", 16, false), layer("fc2.weight", 12, j.level >= 3 && j.metric.as_deref() == Some("magnitude"))],
        device: "cpu".into(),
        diverged: false,
    }
}

/// One integer from SQL, on either backend.
pub async fn scalar(store: &Store, sql: &str) -> i64 {
    match store {
        Store::Postgres(p) => sqlx::query(sql).fetch_one(p).await.unwrap().try_get::<i64, _>(0).unwrap(),
        Store::Sqlite(p) => sqlx::query(sql).fetch_one(p).await.unwrap().try_get::<i64, _>(0).unwrap(),
    }
}

/// Test certificates (rcgen): a CA, a server certificate for localhost/127.0.0.1 and a client
/// certificate, all signed by that CA, written as PEM files in `dir`.
pub struct Pki {
    pub ca: std::path::PathBuf,
    pub server_cert: std::path::PathBuf,
    pub server_key: std::path::PathBuf,
    pub client_cert: std::path::PathBuf,
    pub client_key: std::path::PathBuf,
    /// A second, unrelated CA (a client certificate it signed must be refused).
    pub other_ca_client_cert: std::path::PathBuf,
    pub other_ca_client_key: std::path::PathBuf,
}

pub fn make_pki(dir: &std::path::Path) -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
    let ca_pair = |cn: &str| {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, cn);
        let cert = p.self_signed(&key).unwrap();
        (cert, key)
    };
    let (ca, ca_key) = ca_pair("lth test CA");
    let (other, other_key) = ca_pair("some other CA");
    let leaf = |names: Vec<String>, usage: ExtendedKeyUsagePurpose, issuer: &rcgen::Certificate, issuer_key: &KeyPair| {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(names).unwrap();
        p.extended_key_usages = vec![usage];
        p.distinguished_name.push(DnType::CommonName, "lth test");
        let cert = p.signed_by(&key, issuer, issuer_key).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (sc, sk) = leaf(vec!["localhost".into(), "127.0.0.1".into()], ExtendedKeyUsagePurpose::ServerAuth, &ca, &ca_key);
    let (cc, ck) = leaf(vec!["worker.test".into()], ExtendedKeyUsagePurpose::ClientAuth, &ca, &ca_key);
    let (oc, ok) = leaf(vec!["worker.test".into()], ExtendedKeyUsagePurpose::ClientAuth, &other, &other_key);
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    Pki {
        ca: write("ca.pem", &ca.pem()),
        server_cert: write("server.pem", &sc),
        server_key: write("server.key", &sk),
        client_cert: write("client.pem", &cc),
        client_key: write("client.key", &ck),
        other_ca_client_cert: write("other-client.pem", &oc),
        other_ca_client_key: write("other-client.key", &ok),
    }
}
