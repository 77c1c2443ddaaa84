//! `GET /sweeps/{id}/live`: the sweep's events as Server-Sent Events, read from the same events
//! table as the gRPC WatchSweep stream (`rpc/watch.rs`) with the same loop: one indexed read per
//! `--watch-poll` interval per open page, nothing when nothing happened, and a fresh summary
//! (counts per state, per metric) once per batch of events rather than per event.
//!
//! Events: `job` (`{id, state, progress, attempt, worker}`), `summary` (`{state, jobs: {...},
//! metrics: [{metric, total, done}]}`), and `end` once the sweep has finished and every event was
//! sent (the page then closes the stream instead of letting EventSource reconnect). Each SSE id is
//! the events-table id, so a reconnecting browser resumes after `Last-Event-ID`.

use super::session::Caller;
use crate::http::HttpState;
use crate::store::SweepInfo;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;

fn summary_json(s: &SweepInfo) -> serde_json::Value {
    let j = &s.jobs;
    serde_json::json!({
        "state": s.state,
        "jobs": {"blocked": j.blocked, "ready": j.ready, "running": j.running, "succeeded": j.succeeded, "failed": j.failed, "cancelled": j.cancelled},
        "metrics": s.metrics.iter().map(|(m, total, done)| serde_json::json!({"metric": m, "total": total, "done": done})).collect::<Vec<_>>(),
    })
}

fn terminal(state: &str) -> bool {
    matches!(state, "succeeded" | "failed" | "cancelled")
}

pub async fn live(State(st): State<Arc<HttpState>>, _c: Caller, Path(id): Path<i64>, Query(q): Query<HashMap<String, String>>, headers: HeaderMap) -> Response {
    let coord = st.coord.clone();
    let first = match coord.store.get_sweep(id).await {
        Ok(s) => s,
        Err(e) => return super::store_error(None, e),
    };
    let resume = headers.get("last-event-id").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<i64>().ok());
    let mut after = resume.or_else(|| q.get("after").and_then(|a| a.parse().ok())).unwrap_or(0).max(0);
    let (tx, rx) = tokio::sync::mpsc::channel::<Event>(64);
    tokio::spawn(async move {
        let hello = Event::default().event("summary").id(after.to_string()).data(summary_json(&first).to_string());
        if tx.send(hello).await.is_err() {
            return;
        }
        let mut idle_rounds: u32 = 9;
        loop {
            let batch = match coord.store.events_after(id, after, 500).await {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(sweep_id = id, error = %e, "dashboard live stream: reading events failed; the browser reconnects");
                    return;
                }
            };
            for e in &batch {
                after = e.id;
                if let Some(j) = &e.job {
                    let data = serde_json::json!({
                        "id": j.id, "state": j.state, "progress": j.progress, "attempt": j.attempt,
                        "worker": j.worker_id, "kind": e.kind,
                    });
                    if tx.send(Event::default().event("job").id(e.id.to_string()).data(data.to_string())).await.is_err() {
                        return;
                    }
                }
            }
            // An idle sweep costs one indexed read per interval; its state is re-read after a
            // batch of events and every tenth idle round (finishing writes events, so this only
            // bounds how late `end` can come after a missed one).
            if batch.is_empty() {
                idle_rounds += 1;
                if idle_rounds % 10 != 0 {
                    tokio::select! {
                        _ = tokio::time::sleep(coord.opts.watch_poll) => {}
                        _ = tx.closed() => return,
                    }
                    continue;
                }
            } else {
                idle_rounds = 0;
            }
            let s = match coord.store.get_sweep(id).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(sweep_id = id, error = %e, "dashboard live stream: reading the sweep failed");
                    return;
                }
            };
            if !batch.is_empty() {
                if tx.send(Event::default().event("summary").id(after.to_string()).data(summary_json(&s).to_string())).await.is_err() {
                    return;
                }
                if !terminal(&s.state) {
                    continue;
                }
            }
            if terminal(&s.state) {
                match coord.store.events_after(id, after, 1).await {
                    Ok(more) if more.is_empty() => {
                        let _ = tx.send(Event::default().event("end").id(after.to_string()).data(s.state.clone())).await;
                        return;
                    }
                    Ok(_) => continue,
                    Err(_) => return,
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(coord.opts.watch_poll) => {}
                _ = tx.closed() => return,
            }
        }
    });
    let stream = futures::StreamExt::map(tokio_stream::wrappers::ReceiverStream::new(rx), Ok::<Event, Infallible>);
    Sse::new(stream).keep_alive(KeepAlive::default()).into_response()
}
