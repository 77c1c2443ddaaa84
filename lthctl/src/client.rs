//! Talking to the coordinator: connecting, and turning gRPC failures into messages that say what
//! to do next.

use anyhow::{anyhow, Result};
use lth_proto::v1::sweep_service_client::SweepServiceClient;
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

/// A connected `SweepService` client and the URL it was reached at (for messages).
#[derive(Clone)]
pub struct Coordinator {
    pub url: String,
    pub sweeps: SweepServiceClient<Channel>,
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
    let url = normalize_url(url);
    let endpoint = Endpoint::from_shared(url.clone())
        .map_err(|e| anyhow!("invalid coordinator URL {url:?} ({e}): write it as http://HOST:PORT, e.g. http://127.0.0.1:50051"))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true);
    let channel = endpoint.connect().await.map_err(|e| anyhow!("{} ({})", unreachable_message(&url), error_chain(&e)))?;
    Ok(Coordinator { url, sweeps: SweepServiceClient::new(channel) })
}

/// "transport error: tcp connect error: Connection refused (os error 111)": tonic's own Display
/// stops at the first, least useful, level.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    parts.join(": ")
}

impl Coordinator {
    /// Explains a failed call. `what` names the request, e.g. "sweep 12" or "the submit".
    pub fn explain(&self, status: Status, what: &str) -> anyhow::Error {
        explain_status(&self.url, status, what)
    }
}

pub fn explain_status(url: &str, status: Status, what: &str) -> anyhow::Error {
    let msg = status.message();
    match status.code() {
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
