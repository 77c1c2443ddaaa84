//! Talking to the coordinator: connecting, and turning gRPC failures into messages that say what
//! to do next.

use anyhow::{anyhow, Result};
use lth_proto::client::{scheme_hint, ClientOptions, TokenInterceptor};
use lth_proto::v1::sweep_service_client::SweepServiceClient;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Status};

/// The client stub: every call carries the token.
pub type SweepClient = SweepServiceClient<InterceptedService<Channel, TokenInterceptor>>;

/// A connected `SweepService` client and the URL it was reached at (for messages).
#[derive(Clone)]
pub struct Coordinator {
    pub url: String,
    pub sweeps: SweepClient,
}

/// `--token-file` of this invocation (set once by `commands::run`; None: the environment's).
static TOKEN_FILE: Mutex<Option<PathBuf>> = Mutex::new(None);

pub fn set_token_file(path: Option<PathBuf>) {
    *TOKEN_FILE.lock().unwrap() = path;
}

/// Token and TLS settings: `--token-file`, else LTH_TOKEN_FILE / LTH_TOKEN; LTH_TLS_CA ….
pub fn client_options() -> Result<ClientOptions> {
    let file = TOKEN_FILE.lock().unwrap().clone();
    ClientOptions::from_env(file.as_deref())
}

/// Accepts `host:port` as shorthand for `http://host:port`.
pub fn normalize_url(url: &str) -> String {
    let url = url.trim();
    if url.contains("://") {
        url.to_string()
    } else {
        format!("http://{url}")
    }
}

/// The advice printed whenever the coordinator cannot be reached.
pub fn unreachable_message(url: &str) -> String {
    format!("cannot reach the coordinator at {url}: is `lth-coordinator` running? set --coordinator or LTH_COORDINATOR")
}

pub async fn connect(url: &str) -> Result<Coordinator> {
    connect_with(url, &client_options()?).await
}

/// [`connect`] with explicit token and TLS settings. `https://` means TLS; a plaintext/TLS
/// mismatch is named as such.
pub async fn connect_with(url: &str, opts: &ClientOptions) -> Result<Coordinator> {
    let url = normalize_url(url);
    let endpoint = opts.endpoint(&url)?.connect_timeout(Duration::from_secs(5)).tcp_nodelay(true);
    let channel = endpoint.connect().await.map_err(|e| {
        let chain = lth_proto::client::error_chain(&e);
        match scheme_hint(&url, &chain) {
            Some(hint) => anyhow!("{hint} ({chain})"),
            None => anyhow!("{} ({chain})", unreachable_message(&url)),
        }
    })?;
    Ok(Coordinator { url, sweeps: SweepServiceClient::with_interceptor(channel, opts.interceptor()?) })
}

impl Coordinator {
    /// Explains a failed call. `what` names the request, e.g. "sweep 12" or "the submit".
    pub fn explain(&self, status: Status, what: &str) -> anyhow::Error {
        explain_status(&self.url, status, what)
    }
}

pub fn explain_status(url: &str, status: Status, what: &str) -> anyhow::Error {
    let msg = status.message();
    // Auth refusals: the reason and its metadata say which role is needed.
    if let Some(advice) = lth_proto::errors::auth_advice(&status) {
        return anyhow!("the coordinator at {url} refused {what}: {advice}");
    }
    match status.code() {
        Code::Unauthenticated => anyhow!("the coordinator at {url} refused {what}: {msg}"),
        Code::PermissionDenied => anyhow!("the coordinator at {url} refused {what}: {msg}; ask its admin for a token with that role"),
        Code::Unavailable | Code::Cancelled | Code::Unknown | Code::Internal if scheme_hint(url, msg).is_some() => {
            anyhow!("{} ({msg})", scheme_hint(url, msg).unwrap_or_default())
        }
        Code::Unavailable | Code::Cancelled => anyhow!("{} ({msg})", unreachable_message(url)),
        Code::DeadlineExceeded => anyhow!("the coordinator at {url} did not answer in time for {what}: it may be overloaded; try again"),
        Code::NotFound => anyhow!("{what}: not found ({msg}): `lthctl ls` lists the sweeps"),
        Code::InvalidArgument => anyhow!("the coordinator rejected {what}: {msg}; fix it and try again"),
        Code::FailedPrecondition => anyhow!("{what}: {msg}"),
        Code::AlreadyExists => anyhow!("{what}: {msg}"),
        Code::Unimplemented => anyhow!(
            "the coordinator at {url} does not implement this request ({what}): are lthctl and lth-coordinator the same version?"
        ),
        code => anyhow!("{what} failed at the coordinator ({code:?}): {msg}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_refusals_name_the_role_needed() {
        let s = lth_proto::errors::error_status_with(
            Code::PermissionDenied,
            lth_proto::v1::ErrorReason::RoleRefused,
            "any text",
            &[("needed_roles", "submitter,admin"), ("role", "viewer"), ("token", "ro"), ("method", "/lth.v1.SweepService/SubmitSweep")],
        );
        let back = Status::with_details(s.code(), s.message().to_string(), s.details().to_vec().into());
        let text = explain_status("http://c:1", back, "the submit").to_string();
        assert!(text.contains("refused the submit") && text.contains("needs role submitter or admin") && text.contains("has role viewer"), "{text}");
    }

    #[test]
    fn shorthand_urls_get_a_scheme() {
        assert_eq!(normalize_url("127.0.0.1:50051"), "http://127.0.0.1:50051");
        assert_eq!(normalize_url("https://c.example:443"), "https://c.example:443");
    }

    #[tokio::test]
    async fn a_closed_port_says_how_to_fix_it() {
        // Bind and drop a listener to get a port with nothing on it.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let err = connect(&format!("127.0.0.1:{port}")).await.err().expect("nothing listens there").to_string();
        assert!(err.contains(&format!("cannot reach the coordinator at http://127.0.0.1:{port}")), "{err}");
        assert!(err.contains("LTH_COORDINATOR") && err.contains("--coordinator"), "{err}");
    }

    #[test]
    fn not_found_points_at_ls() {
        let e = explain_status("http://x", Status::not_found("no sweep 9"), "sweep 9").to_string();
        assert!(e.contains("sweep 9") && e.contains("lthctl ls"), "{e}");
    }
}
