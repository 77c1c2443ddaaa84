//! WatchSweep: the events table as a live stream.
//!
//! One task per watcher polls `events` (an indexed read after the last event sent) every
//! `watch_poll`; the dashboard's `/sweeps/{id}/live` runs the same loop as Server-Sent Events.

use super::convert::{job_info, summary, sweep_finished, ts};
use super::{status, Coordinator};
use futures::Stream;
use lth_proto::v1 as pb;
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::mpsc::Sender;
use tonic::Status;

pub type EventStream = Pin<Box<dyn Stream<Item = Result<pb::SweepEvent, Status>> + Send>>;

/// Sends the sweep's summary first, then every event after `after_event_id` in order, with a
/// fresh summary on each sweep-level event; ends once the sweep has finished and every event was
/// sent. A sweep that does not exist is refused before the stream starts.
pub(super) async fn watch(coord: Arc<Coordinator>, req: pb::WatchSweepRequest) -> Result<EventStream, Status> {
    let first = coord.store.get_sweep(req.sweep_id).await.map_err(status)?;
    let hello = pb::SweepEvent {
        event_id: req.after_event_id.max(0),
        at: Some(ts(chrono::Utc::now())),
        event: Some(pb::sweep_event::Event::Sweep(summary(&first)?)),
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<pb::SweepEvent, Status>>(64);
    tokio::spawn(async move {
        if tx.send(Ok(hello)).await.is_err() {
            return;
        }
        if let Err(e) = follow(&coord, req.sweep_id, req.after_event_id.max(0), &tx).await {
            let _ = tx.send(Err(e)).await;
        }
    });
    Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
}

/// The polling loop: Ok when the stream is done (the sweep finished, or the client went away),
/// Err with the status to end it with.
async fn follow(coord: &Coordinator, sweep_id: i64, mut after: i64, tx: &Sender<Result<pb::SweepEvent, Status>>) -> Result<(), Status> {
    loop {
        let batch = coord.store.events_after(sweep_id, after, 500).await.map_err(status)?;
        for e in &batch {
            after = e.id;
            let event = match &e.job {
                Some(j) => pb::sweep_event::Event::Job(job_info(j)?),
                None => pb::sweep_event::Event::Sweep(summary(&coord.store.get_sweep(sweep_id).await.map_err(status)?)?),
            };
            if tx.send(Ok(pb::SweepEvent { event_id: e.id, at: Some(ts(e.at)), event: Some(event) })).await.is_err() {
                return Ok(()); // the client went away
            }
        }
        if !batch.is_empty() {
            continue;
        }
        let s = coord.store.get_sweep(sweep_id).await.map_err(status)?;
        if sweep_finished(&s)? {
            // The final events commit with the final state; one more look catches any written
            // between the empty read above and this one.
            if coord.store.events_after(sweep_id, after, 1).await.map_err(status)?.is_empty() {
                return Ok(());
            }
            continue;
        }
        tokio::select! {
            _ = tokio::time::sleep(coord.opts.watch_poll) => {}
            _ = tx.closed() => return Ok(()),
        }
    }
}
