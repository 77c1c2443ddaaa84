//! `lthctl watch`: live progress bars fed by the coordinator's `WatchSweep` event stream.
//!
//! `WatchView` owns the bars and applies one event at a time; it holds no connection, so the
//! reconnecting loop (in `commands`) and the tests can drive it alike. One bar per running job
//! (with the coordinator's ETA for it), one overall bar for the sweep; a job that leaves the
//! running state loses its bar and leaves a line saying how it ended.

use crate::convert::{job_state_name, metric_name, sweep_state_is_final, sweep_state_name};
use indicatif::{HumanDuration, MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use lth_proto::v1::{self as pb, sweep_event::Event};
use std::collections::BTreeMap;
use std::time::Duration;

/// Resolution of a job bar: progress arrives as a fraction in [0, 1].
const JOB_BAR_STEPS: u64 = 1000;

pub struct WatchView {
    multi: MultiProgress,
    overall: ProgressBar,
    jobs: BTreeMap<i64, ProgressBar>,
    /// The last event applied, to resume the stream after a reconnect without missing events.
    pub last_event_id: i64,
    /// Set once the sweep reached a final state (its state name).
    pub finished: Option<String>,
    /// Lines printed about jobs that ended (also kept for the caller and the tests).
    pub log: Vec<String>,
    /// Jobs seen ending (state name by job id): the coordinator sends a sweep summary only on
    /// sweep transitions, so the overall bar also counts job events itself.
    ended: BTreeMap<i64, i32>,
    /// The latest summary's (state, jobs ended, jobs failed).
    summary: (i32, u64, u64),
}

fn job_label(j: &pb::JobInfo) -> String {
    if j.level == 0 {
        format!("job {} dense seed {}", j.job_id, j.seed)
    } else {
        format!("job {} {} rate {} seed {} level {}", j.job_id, metric_name(j.metric), j.rate, j.seed, j.level)
    }
}

impl WatchView {
    pub fn new(target: ProgressDrawTarget) -> Self {
        let multi = MultiProgress::with_draw_target(target);
        let overall = multi.add(ProgressBar::new(0));
        overall.set_style(
            ProgressStyle::with_template("{prefix:.bold} [{bar:40.green/white}] {pos}/{len} jobs done  {msg}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        overall.set_prefix("sweep");
        overall.enable_steady_tick(Duration::from_millis(500));
        WatchView { multi, overall, jobs: BTreeMap::new(), last_event_id: 0, finished: None, log: Vec::new(), ended: BTreeMap::new(), summary: (0, 0, 0) }
    }

    /// (job id, position in [0, 1000]) of every job that currently has a bar.
    pub fn running_bars(&self) -> Vec<(i64, u64)> {
        self.jobs.iter().map(|(id, b)| (*id, b.position())).collect()
    }

    /// The overall bar as (jobs finished, jobs in all).
    pub fn overall(&self) -> (u64, u64) {
        (self.overall.position(), self.overall.length().unwrap_or(0))
    }

    pub fn apply(&mut self, event: &pb::SweepEvent) {
        self.last_event_id = self.last_event_id.max(event.event_id);
        match &event.event {
            Some(Event::Sweep(s)) => self.apply_sweep(s),
            Some(Event::Job(j)) => self.apply_job(j),
            None => {}
        }
    }

    fn apply_sweep(&mut self, s: &pb::SweepSummary) {
        let c = s.jobs.unwrap_or_default();
        let total = c.blocked + c.ready + c.running + c.succeeded + c.failed + c.cancelled;
        self.overall.set_prefix(format!("sweep {} {}", s.sweep_id, s.name));
        self.overall.set_length(total);
        self.summary = (s.state, c.succeeded + c.failed + c.cancelled, c.failed);
        self.refresh_overall();
        if sweep_state_is_final(s.state) {
            for (_, bar) in std::mem::take(&mut self.jobs) {
                bar.finish_and_clear();
            }
            self.overall.finish();
            self.finished = Some(sweep_state_name(s.state).to_string());
        }
    }

    fn refresh_overall(&mut self) {
        let (state, ended, failed) = self.summary;
        let failed_here = self.ended.values().filter(|s| **s == pb::JobState::Failed as i32).count() as u64;
        self.overall.set_position(ended.max(self.ended.len() as u64));
        self.overall.set_message(format!(
            "{} · {} running · {} failed",
            sweep_state_name(state),
            self.jobs.len(),
            failed.max(failed_here)
        ));
    }

    fn apply_job(&mut self, j: &pb::JobInfo) {
        let running = j.state == pb::JobState::Running as i32;
        let ended = [pb::JobState::Succeeded, pb::JobState::Failed, pb::JobState::Cancelled].iter().any(|s| *s as i32 == j.state);
        if ended {
            self.ended.insert(j.job_id, j.state);
        } else {
            // A job re-queued after a lost lease or a resumed pause is no longer ended.
            self.ended.remove(&j.job_id);
        }
        if running {
            let bar = self.jobs.entry(j.job_id).or_insert_with(|| {
                let bar = self.multi.add(ProgressBar::new(JOB_BAR_STEPS));
                bar.set_style(
                    ProgressStyle::with_template("  {prefix:<44} [{bar:30.cyan/blue}] {percent:>3}% {msg}")
                        .expect("valid template")
                        .progress_chars("=> "),
                );
                bar
            });
            let worker = if j.worker_id.is_empty() { String::new() } else { format!(" @ {}", j.worker_id) };
            bar.set_prefix(format!("{}{}", job_label(j), worker));
            bar.set_position((j.progress.clamp(0.0, 1.0) * JOB_BAR_STEPS as f64).round() as u64);
            let eta = if j.eta_seconds.is_finite() && j.eta_seconds > 0.0 {
                format!("ETA {}", HumanDuration(Duration::from_secs_f64(j.eta_seconds)))
            } else {
                String::new()
            };
            let attempt = if j.attempt > 1 { format!(" (attempt {})", j.attempt) } else { String::new() };
            bar.set_message(format!("{eta}{attempt}"));
        } else if let Some(bar) = self.jobs.remove(&j.job_id) {
            bar.finish_and_clear();
            self.multi.remove(&bar);
            let mut line = format!("{} {}", job_label(j), job_state_name(j.state));
            if !j.error.is_empty() {
                line.push_str(&format!(": {}", j.error));
            }
            let _ = self.multi.println(&line);
            self.log.push(line);
        } else if j.state == pb::JobState::Failed as i32 {
            let line = format!("{} failed: {}", job_label(j), j.error);
            let _ = self.multi.println(&line);
            self.log.push(line);
        }
        self.refresh_overall();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: i64, state: pb::JobState, progress: f64) -> pb::SweepEvent {
        pb::SweepEvent {
            event_id: id * 10 + (progress * 9.0) as i64,
            at: None,
            event: Some(Event::Job(pb::JobInfo {
                job_id: id,
                state: state as i32,
                level: 1,
                seed: 1,
                rate: 0.2,
                metric: pb::ImportanceMetric::L2 as i32,
                progress,
                eta_seconds: 30.0 * (1.0 - progress),
                worker_id: "w1".into(),
                ..Default::default()
            })),
        }
    }

    fn sweep(state: pb::SweepState, running: u64, succeeded: u64, blocked: u64) -> pb::SweepEvent {
        pb::SweepEvent {
            event_id: 1000 + succeeded as i64,
            at: None,
            event: Some(Event::Sweep(pb::SweepSummary {
                sweep_id: 4,
                name: "demo".into(),
                state: state as i32,
                jobs: Some(pb::JobCounts { running, succeeded, blocked, ..Default::default() }),
                ..Default::default()
            })),
        }
    }

    #[test]
    fn bars_follow_jobs_and_the_sweep() {
        let mut v = WatchView::new(ProgressDrawTarget::hidden());
        v.apply(&sweep(pb::SweepState::Running, 2, 0, 4));
        assert_eq!(v.overall(), (0, 6));
        v.apply(&job(1, pb::JobState::Running, 0.25));
        v.apply(&job(2, pb::JobState::Running, 0.5));
        v.apply(&job(1, pb::JobState::Running, 0.75));
        assert_eq!(v.running_bars(), vec![(1, 750), (2, 500)]);
        v.apply(&job(1, pb::JobState::Succeeded, 1.0));
        assert_eq!(v.running_bars(), vec![(2, 500)]);
        assert_eq!(v.log, vec!["job 1 l2 rate 0.2 seed 1 level 1 succeeded".to_string()]);
        // Counted from the job event, before the coordinator sends a new summary.
        assert_eq!(v.overall(), (1, 6));
        v.apply(&sweep(pb::SweepState::Running, 1, 1, 4));
        assert_eq!(v.overall(), (1, 6));
        assert!(v.finished.is_none());
        v.apply(&sweep(pb::SweepState::Cancelled, 0, 1, 0));
        assert_eq!(v.finished.as_deref(), Some("cancelled"));
        assert!(v.running_bars().is_empty());
        assert_eq!(v.last_event_id, 1001);
    }
}
