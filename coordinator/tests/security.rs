//! Tokens, roles and TLS over real sockets: a coordinator served with `serve_with` on 127.0.0.1:0
//! (SQLite), and tonic clients set up the way lthctl and the worker daemon set theirs up
//! (`lth_proto::client`).

mod common;

use common::*;
use lth_coordinator::artifacts::ArtifactStore;
use lth_coordinator::auth::{auth_line, new_token, AuthPolicy, Role, Tokens};
use lth_coordinator::server::Security;
use lth_coordinator::rpc::ServiceOptions;
use lth_proto::client::{scheme_hint, ClientOptions};
use lth_proto::v1 as pb;
use pb::sweep_service_client::SweepServiceClient;
use pb::worker_service_client::WorkerServiceClient;
use std::collections::HashMap;
use std::time::Duration;
use tonic::Code;

struct Server {
    addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    _db: TestDb,
    _dir: tempfile::TempDir,
}

impl Server {
    async fn start(security: Security) -> Server {
        let db = TestDb::sqlite().await;
        let store = db.store().await;
        let dir = tempfile::tempdir().unwrap();
        let artifacts = ArtifactStore::open(dir.path().to_str().unwrap()).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let opts = ServiceOptions { watch_poll: Duration::from_millis(50), ..Default::default() };
        let task = tokio::spawn(lth_coordinator::server::serve_with(store, artifacts, opts, Duration::from_millis(500), listener, security, async {
            let _ = stop_rx.await;
        }));
        Server { addr, stop: Some(stop), task, _db: db, _dir: dir }
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap().unwrap();
    }
}

type Sweeps = SweepServiceClient<tonic::service::interceptor::InterceptedService<tonic::transport::Channel, lth_proto::client::TokenInterceptor>>;
type Workers = WorkerServiceClient<tonic::service::interceptor::InterceptedService<tonic::transport::Channel, lth_proto::client::TokenInterceptor>>;

async fn clients(url: &str, opts: &ClientOptions) -> Result<(Sweeps, Workers), String> {
    let channel = opts.endpoint(url).map_err(|e| e.to_string())?.connect().await.map_err(|e| lth_proto::client::error_chain(&e))?;
    let i = opts.interceptor().unwrap();
    Ok((SweepServiceClient::with_interceptor(channel.clone(), i.clone()), WorkerServiceClient::with_interceptor(channel, i)))
}

fn with_token(token: &str) -> ClientOptions {
    ClientOptions { token: Some(token.to_string()), ..Default::default() }
}

fn spec_proto() -> pb::SweepSpec {
    pb::SweepSpec::from(&spec(&["magnitude"], &[0.5], &[0], 1))
}

/// Every method of both services, called with a request that gets past authorisation; the
/// outcome's code (Ok if the call succeeded).
async fn call_all(s: &mut Sweeps, w: &mut Workers, sweep_id: i64) -> Vec<(&'static str, (Code, Option<pb::ErrorReason>))> {
    fn code<T>(r: Result<T, tonic::Status>) -> (Code, Option<pb::ErrorReason>) {
        match r {
            Ok(_) => (Code::Ok, None),
            Err(e) => (e.code(), lth_proto::errors::error_reason(&e)),
        }
    }
    let r = |id| pb::SweepRef { sweep_id: id };
    let mut out = Vec::new();
    out.push(("SubmitSweep", code(s.submit_sweep(pb::SubmitSweepRequest { spec: Some(spec_proto()), client_token: String::new(), dry_run: true }).await)));
    out.push(("GetSweep", code(s.get_sweep(pb::GetSweepRequest { sweep_id }).await)));
    out.push(("ListSweeps", code(s.list_sweeps(pb::ListSweepsRequest { limit: 5 }).await)));
    out.push(("PauseSweep", code(s.pause_sweep(r(sweep_id)).await)));
    out.push(("ResumeSweep", code(s.resume_sweep(r(sweep_id)).await)));
    out.push(("RetrySweep", code(s.retry_sweep(pb::RetrySweepRequest { sweep_id, trial_id: 0 }).await)));
    // A sweep that does not exist: the auth layer decides before the handler can say NotFound.
    out.push(("CancelSweep", code(s.cancel_sweep(r(999_999)).await)));
    out.push(("ListJobs", code(s.list_jobs(pb::ListJobsRequest { sweep_id, ..Default::default() }).await)));
    out.push(("ListWorkers", code(s.list_workers(pb::ListWorkersRequest::default()).await)));
    out.push(("WatchSweep", code(s.watch_sweep(pb::WatchSweepRequest { sweep_id: 999_999, after_event_id: 0 }).await)));
    out.push(("GetResults", code(s.get_results(pb::GetResultsRequest { sweep_id }).await)));
    out.push(("StreamMasks", code(s.stream_masks(pb::StreamMasksRequest { sweep_id, ..Default::default() }).await)));
    // An empty upload: past authorisation it is an invalid argument.
    out.push(("UploadInput", code(s.upload_input(futures::stream::iter(Vec::<pb::InputChunk>::new())).await)));
    out.push(("ListInputs", code(s.list_inputs(pb::ListInputsRequest::default()).await)));
    out.push((
        "RegisterWorker",
        code(w.register_worker(pb::RegisterWorkerRequest { worker_id: "w-auth".into(), host: "h".into(), cpus: 1, slots: 1, ..Default::default() }).await),
    ));
    out.push(("ClaimJobs", code(w.claim_jobs(pb::ClaimJobsRequest { worker_id: "nobody".into(), free_slots: 0 }).await)));
    out.push(("Heartbeat", code(w.heartbeat(pb::HeartbeatRequest { worker_id: "nobody".into(), running: vec![], ..Default::default() }).await)));
    out.push(("ReportProgress", code(w.report_progress(pb::ReportProgressRequest { lease: None, ..Default::default() }).await)));
    out.push(("CompleteJob", code(w.complete_job(pb::CompleteJobRequest { lease: None, result: None, ..Default::default() }).await)));
    out.push(("FailJob", code(w.fail_job(pb::FailJobRequest { lease: None, ..Default::default() }).await)));
    let chunk = pb::ArtifactChunk { name: "weights".into(), ..Default::default() };
    out.push(("UploadArtifact", code(w.upload_artifact(futures::stream::iter(vec![chunk])).await)));
    out.push(("DownloadArtifact", code(w.download_artifact(pb::DownloadArtifactRequest { job_id: 999_999, name: "weights".into(), lease: None }).await)));
    out.push(("DownloadInput", code(w.download_input(pb::DownloadInputRequest { sha256: "0".repeat(64) }).await)));
    out
}

const SUBMIT: &[&str] = &["SubmitSweep", "PauseSweep", "ResumeSweep", "CancelSweep", "RetrySweep", "UploadInput"];
const VIEW: &[&str] = &["GetSweep", "ListSweeps", "ListJobs", "ListWorkers", "WatchSweep", "GetResults", "StreamMasks", "ListInputs"];
const WORK: &[&str] = &["RegisterWorker", "ClaimJobs", "Heartbeat", "ReportProgress", "CompleteJob", "FailJob", "UploadArtifact", "DownloadArtifact", "DownloadInput"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_role_is_allowed_exactly_its_calls_and_owners_are_enforced() {
    let tokens: HashMap<&str, String> = ["viewer", "alice", "bob", "worker", "admin"].into_iter().map(|n| (n, new_token())).collect();
    let file = [
        auth_line(Role::Viewer, "viewer", &tokens["viewer"]),
        auth_line(Role::Submitter, "alice", &tokens["alice"]),
        auth_line(Role::Submitter, "bob", &tokens["bob"]),
        auth_line(Role::Worker, "worker", &tokens["worker"]),
        auth_line(Role::Admin, "admin", &tokens["admin"]),
    ]
    .join("\n");
    let auth = AuthPolicy { tokens: Some(Tokens::parse(&file, "test").unwrap()), require_worker_cert: false };
    let server = Server::start(Security { auth, ..Default::default() }).await;
    let url = format!("http://{}", server.addr);

    // alice submits a sweep: she owns it.
    let (mut alice, _) = clients(&url, &with_token(&tokens["alice"])).await.unwrap();
    let sub = alice.submit_sweep(pb::SubmitSweepRequest { spec: Some(spec_proto()), client_token: "a".into(), dry_run: false }).await.unwrap().into_inner();
    let summary = alice.get_sweep(pb::GetSweepRequest { sweep_id: sub.sweep_id }).await.unwrap().into_inner();
    assert_eq!(summary.owner, "alice");

    for (name, allowed) in [
        ("viewer", VIEW.to_vec()),
        ("alice", [VIEW, SUBMIT].concat()),
        ("worker", WORK.to_vec()),
        ("admin", [VIEW, SUBMIT, WORK].concat()),
    ] {
        let (mut s, mut w) = clients(&url, &with_token(&tokens[name])).await.unwrap();
        for (method, (code, reason)) in call_all(&mut s, &mut w, sub.sweep_id).await {
            if allowed.contains(&method) {
                assert!(!matches!(code, Code::PermissionDenied | Code::Unauthenticated), "{name} must be allowed {method}, got {code:?}");
            } else {
                assert_eq!(code, Code::PermissionDenied, "{name} must be refused {method}");
                assert_eq!(reason, Some(pb::ErrorReason::RoleRefused), "{name} refused {method}: the reason says why");
            }
        }
    }

    // The refusal names the role needed.
    let (mut viewer, _) = clients(&url, &with_token(&tokens["viewer"])).await.unwrap();
    let e = viewer.cancel_sweep(pb::SweepRef { sweep_id: sub.sweep_id }).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(e.message().contains("needs role submitter or admin") && e.message().contains("has role viewer"), "{}", e.message());

    // No token, and an unknown token: UNAUTHENTICATED, every method of both services.
    for (opts, why) in [(ClientOptions::default(), pb::ErrorReason::MissingToken), (with_token("lth_not-a-token"), pb::ErrorReason::UnknownToken)] {
        let (mut s, mut w) = clients(&url, &opts).await.unwrap();
        for (method, (code, reason)) in call_all(&mut s, &mut w, sub.sweep_id).await {
            assert_eq!(code, Code::Unauthenticated, "{method} without a valid token");
            assert_eq!(reason, Some(why), "{method} without a valid token");
        }
    }
    let (mut anon, _) = clients(&url, &ClientOptions::default()).await.unwrap();
    let e = anon.list_sweeps(pb::ListSweepsRequest { limit: 1 }).await.unwrap_err();
    assert!(e.message().contains("needs a token with role viewer, submitter or admin: none was sent"), "{}", e.message());
    assert_eq!(lth_proto::errors::error_metadata(&e, "needed_roles").as_deref(), Some("viewer,submitter,admin"));
    assert_eq!(lth_proto::errors::error_metadata(&e, "method").as_deref(), Some("/lth.v1.SweepService/ListSweeps"));
    let advice = lth_proto::errors::auth_advice(&e).unwrap();
    assert!(advice.contains("needs a token with role viewer, submitter or admin") && advice.contains("LTH_TOKEN"), "{advice}");

    // A refused role: the metadata names the roles needed and the token's own (lthctl and the
    // worker print auth_advice).
    let (_, mut viewer_w) = clients(&url, &with_token(&tokens["viewer"])).await.unwrap();
    let e = viewer_w.claim_jobs(pb::ClaimJobsRequest { worker_id: "x".into(), free_slots: 1 }).await.unwrap_err();
    assert_eq!(lth_proto::errors::error_reason(&e), Some(pb::ErrorReason::RoleRefused));
    assert_eq!(lth_proto::errors::error_metadata(&e, "needed_roles").as_deref(), Some("worker,admin"));
    assert_eq!(lth_proto::errors::error_metadata(&e, "role").as_deref(), Some("viewer"));
    assert_eq!(lth_proto::errors::error_metadata(&e, "token").as_deref(), Some("viewer"));
    let advice = lth_proto::errors::auth_advice(&e).unwrap();
    assert!(advice.contains("needs role worker or admin") && advice.contains("has role viewer"), "{advice}");

    // Health needs no token.
    let channel = tonic::transport::Channel::from_shared(url.clone()).unwrap().connect().await.unwrap();
    let h = tonic_health::pb::health_client::HealthClient::new(channel).check(tonic_health::pb::HealthCheckRequest::default()).await.unwrap();
    assert_eq!(h.into_inner().status(), tonic_health::pb::health_check_response::ServingStatus::Serving);

    // Owners: bob (another submitter) may not touch alice's sweep; alice and the admin may.
    let (mut bob, _) = clients(&url, &with_token(&tokens["bob"])).await.unwrap();
    for e in [
        bob.pause_sweep(pb::SweepRef { sweep_id: sub.sweep_id }).await.unwrap_err(),
        bob.cancel_sweep(pb::SweepRef { sweep_id: sub.sweep_id }).await.unwrap_err(),
        bob.resume_sweep(pb::SweepRef { sweep_id: sub.sweep_id }).await.unwrap_err(),
        bob.retry_sweep(pb::RetrySweepRequest { sweep_id: sub.sweep_id, trial_id: 0 }).await.unwrap_err(),
    ] {
        assert_eq!(e.code(), Code::PermissionDenied);
        assert!(e.message().contains("belongs to \"alice\"") && e.message().contains("only its own sweeps"), "{}", e.message());
        assert_eq!(lth_proto::errors::error_reason(&e), Some(pb::ErrorReason::NotOwner));
        assert_eq!(lth_proto::errors::error_metadata(&e, "owner").as_deref(), Some("alice"));
        assert_eq!(lth_proto::errors::error_metadata(&e, "needed_roles").as_deref(), Some("admin"));
    }
    let paused = alice.pause_sweep(pb::SweepRef { sweep_id: sub.sweep_id }).await.unwrap().into_inner();
    assert_eq!(paused.state(), pb::SweepState::Paused);
    let (mut admin, _) = clients(&url, &with_token(&tokens["admin"])).await.unwrap();
    let resumed = admin.resume_sweep(pb::SweepRef { sweep_id: sub.sweep_id }).await.unwrap().into_inner();
    assert_eq!(resumed.state(), pb::SweepState::Running);
    let listed = bob.list_sweeps(pb::ListSweepsRequest { limit: 10 }).await.unwrap().into_inner().sweeps;
    assert_eq!(listed[0].owner, "alice");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_completion_without_a_worker_token_is_refused() {
    let (admin_t, worker_t, sub_t) = (new_token(), new_token(), new_token());
    let file = format!(
        "{}\n{}\n{}\n",
        auth_line(Role::Admin, "admin", &admin_t),
        auth_line(Role::Worker, "pool", &worker_t),
        auth_line(Role::Submitter, "mallory", &sub_t)
    );
    let auth = AuthPolicy { tokens: Some(Tokens::parse(&file, "test").unwrap()), require_worker_cert: false };
    let server = Server::start(Security { auth, ..Default::default() }).await;
    let url = format!("http://{}", server.addr);
    let (mut s, _) = clients(&url, &with_token(&admin_t)).await.unwrap();
    let sub = s.submit_sweep(pb::SubmitSweepRequest { spec: Some(spec_proto()), client_token: String::new(), dry_run: false }).await.unwrap().into_inner();
    let (_, mut w) = clients(&url, &with_token(&worker_t)).await.unwrap();
    w.register_worker(pb::RegisterWorkerRequest { worker_id: "w1".into(), host: "h".into(), cpus: 1, slots: 1, ..Default::default() }).await.unwrap();
    let job = w.claim_jobs(pb::ClaimJobsRequest { worker_id: "w1".into(), free_slots: 1 }).await.unwrap().into_inner().jobs.remove(0);
    let forged = pb::CompleteJobRequest {
        lease: Some(pb::JobLease { job_id: job.job_id, attempt: job.attempt }),
        result: Some(pb::LevelResult { test_accuracy: 1.0, epochs: -3.0, ..Default::default() }),
        ..Default::default()
    };
    for (opts, want) in [(ClientOptions::default(), Code::Unauthenticated), (with_token("lth_guess"), Code::Unauthenticated), (with_token(&sub_t), Code::PermissionDenied)] {
        let (_, mut forger) = clients(&url, &opts).await.unwrap();
        let e = forger.complete_job(forged.clone()).await.unwrap_err();
        assert_eq!(e.code(), want, "{}", e.message());
        assert!(e.message().contains("worker or admin"), "{}", e.message());
    }
    let jobs = s.list_jobs(pb::ListJobsRequest { sweep_id: sub.sweep_id, ..Default::default() }).await.unwrap().into_inner().jobs;
    let j = jobs.iter().find(|j| j.job_id == job.job_id).unwrap();
    assert_eq!(j.state(), pb::JobState::Running, "the forged completions changed nothing");
    server.stop().await;
}

fn tls_security(pki: &Pki, mutual: bool, tokens: Option<Tokens>) -> Security {
    use tonic::transport::{Certificate, Identity, ServerTlsConfig};
    let mut tls = ServerTlsConfig::new().identity(Identity::from_pem(std::fs::read(&pki.server_cert).unwrap(), std::fs::read(&pki.server_key).unwrap()));
    if mutual {
        tls = tls.client_ca_root(Certificate::from_pem(std::fs::read(&pki.ca).unwrap())).client_auth_optional(true);
    }
    Security { auth: AuthPolicy { tokens, require_worker_cert: mutual }, tls: Some(tls), ..Default::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_end_to_end_and_downgrades_fail_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path());
    let token = new_token();
    let tokens = Tokens::parse(&auth_line(Role::Admin, "admin", &token), "t").unwrap();
    let server = Server::start(tls_security(&pki, false, Some(tokens))).await;
    let port = server.addr.port();
    let good = ClientOptions { token: Some(token.clone()), tls_ca: Some(pki.ca.clone()), ..Default::default() };

    // https:// with the CA: calls work, token and all.
    for host in ["localhost", "127.0.0.1"] {
        let (mut s, mut w) = clients(&format!("https://{host}:{port}"), &good).await.unwrap();
        s.submit_sweep(pb::SubmitSweepRequest { spec: Some(spec_proto()), client_token: String::new(), dry_run: false }).await.unwrap();
        w.register_worker(pb::RegisterWorkerRequest { worker_id: "w".into(), host: "h".into(), cpus: 1, slots: 1, ..Default::default() }).await.unwrap();
        assert_eq!(s.list_sweeps(pb::ListSweepsRequest { limit: 10 }).await.unwrap().into_inner().sweeps[0].owner, "admin");
    }

    // https:// without the CA (system roots): the handshake fails, and says what to check.
    let url = format!("https://localhost:{port}");
    let e = clients(&url, &with_token(&token)).await.err().expect("an unknown CA is refused");
    let hint = scheme_hint(&url, &e).unwrap_or_else(|| panic!("no hint for {e}"));
    assert!(hint.contains("LTH_TLS_CA"), "{hint}");

    // http:// to the TLS server: the first call fails, and the message says to use https://.
    let url = format!("http://127.0.0.1:{port}");
    let outcome = match clients(&url, &with_token(&token)).await {
        Err(e) => e,
        Ok((mut s, _)) => format!("{:?}", s.list_sweeps(pb::ListSweepsRequest { limit: 1 }).await.expect_err("plaintext to a TLS port must fail")),
    };
    let hint = scheme_hint(&url, &outcome).unwrap_or_else(|| panic!("no hint for {outcome}"));
    assert!(hint.contains("use an https:// URL"), "{hint}");

    // The TLS server survived the plaintext attempt.
    let (mut s, _) = clients(&format!("https://localhost:{port}"), &good).await.unwrap();
    s.list_sweeps(pb::ListSweepsRequest { limit: 1 }).await.unwrap();
    server.stop().await;

    // https:// to a plaintext server.
    let plain = Server::start(Security::default()).await;
    let url = format!("https://127.0.0.1:{}", plain.addr.port());
    let outcome = match clients(&url, &good).await {
        Err(e) => e,
        Ok((mut s, _)) => format!("{:?}", s.list_sweeps(pb::ListSweepsRequest { limit: 1 }).await.expect_err("TLS to a plaintext port must fail")),
    };
    let hint = scheme_hint(&url, &outcome).unwrap_or_else(|| panic!("no hint for {outcome}"));
    assert!(hint.contains("if that coordinator serves plaintext, use http://"), "{hint}");
    // A CA file with an http:// URL is a mistake, said before connecting.
    let e = good.endpoint(&format!("http://127.0.0.1:{}", plain.addr.port())).unwrap_err().to_string();
    assert!(e.contains("use https://"), "{e}");
    plain.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_requires_a_client_certificate_for_worker_calls() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path());
    let server = Server::start(tls_security(&pki, true, None)).await;
    let url = format!("https://localhost:{}", server.addr.port());
    let reg = || pb::RegisterWorkerRequest { worker_id: "w".into(), host: "h".into(), cpus: 1, slots: 1, ..Default::default() };

    // No client certificate: people's calls work, worker calls are refused with the reason.
    let no_cert = ClientOptions { tls_ca: Some(pki.ca.clone()), ..Default::default() };
    let (mut s, mut w) = clients(&url, &no_cert).await.unwrap();
    s.list_sweeps(pb::ListSweepsRequest { limit: 1 }).await.unwrap();
    let e = w.register_worker(reg()).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(e.message().contains("needs a client certificate") && e.message().contains("LTH_TLS_CLIENT_CERT"), "{}", e.message());
    assert_eq!(lth_proto::errors::error_reason(&e), Some(pb::ErrorReason::ClientCertRequired));
    assert_eq!(lth_proto::errors::error_metadata(&e, "needed_roles").as_deref(), Some("worker,admin"));

    // A certificate from the right CA: worker calls work.
    let with_cert = ClientOptions { tls_cert: Some(pki.client_cert.clone()), tls_key: Some(pki.client_key.clone()), ..no_cert.clone() };
    let (_, mut w) = clients(&url, &with_cert).await.unwrap();
    w.register_worker(reg()).await.unwrap();
    w.claim_jobs(pb::ClaimJobsRequest { worker_id: "w".into(), free_slots: 1 }).await.unwrap();

    // A certificate from another CA: the handshake (or the first call) fails.
    let foreign = ClientOptions { tls_cert: Some(pki.other_ca_client_cert.clone()), tls_key: Some(pki.other_ca_client_key.clone()), ..no_cert };
    let refused = match clients(&url, &foreign).await {
        Err(_) => true,
        Ok((_, mut w)) => w.register_worker(reg()).await.is_err(),
    };
    assert!(refused, "a client certificate from an unknown CA must be refused");
    server.stop().await;
}
