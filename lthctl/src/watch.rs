//! `lthctl watch`: live progress fed by the coordinator's `WatchSweep` event stream.
//!
//! `WatchView` applies one event at a time; it holds no connection, so the reconnecting loop (in
//! `commands`) and the tests can drive it alike. Two ways to show it:
//! - [`Display::Bars`] (a terminal): one bar per running job (with the coordinator's ETA for it),
//!   one overall bar for the sweep; a job that leaves the running state loses its bar and leaves a
//!   line saying how it ended.
//! - [`Display::Lines`] (nohup, CI, Slurm logs, `--lines`): one timestamped line per event, for the
//!   caller to print ([`WatchView::take_lines`]). Progress of a running job is thinned to one line
//!   per 10% so a log of a long sweep stays readable; state changes always print.

use crate::convert::{job_state_name, metric_name, sweep_state_is_final, sweep_state_name, timestamp_text};
use indicatif::{HumanDuration, MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use lth_proto::v1::{self as pb, sweep_event::Event};
use std::collections::BTreeMap;
use std::time::Duration;

/// Resolution of a job bar: progress arrives as a fraction in [0, 1].
const JOB_BAR_STEPS: u64 = 1000;

/// How the view shows itself.
pub enum Display {
    Bars(ProgressDrawTarget),
    Lines,
}

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
    /// Line mode: lines not yet taken by the caller, and per running job the last progress decile
    /// printed (absent: its start not printed yet).
    lines: Option<Vec<String>>,
    printed_decile: BTreeMap<i64, u64>,
    /// Line mode: the timestamp of the event being applied.
    at: String,
}

fn job_label(j: &pb::JobInfo) -> String {
    if j.level == 0 {
        format!("job {} dense seed {}", j.job_id, j.seed)
    } else {
        format!("job {} {} rate {} seed {} level {}", j.job_id, metric_name(j.metric), j.rate, j.seed, j.level)
    }
}

fn eta_text(j: &pb::JobInfo) -> String {
    if j.eta_seconds.is_finite() && j.eta_seconds > 0.0 {
        format!("ETA {}", HumanDuration(Duration::from_secs_f64(j.eta_seconds)))
    } else {
        String::new()
    }
}

impl WatchView {
    pub fn new(display: Display) -> Self {
        let (target, lines) = match display {
            Display::Bars(target) => (target, None),
            // The bars still count (the caller reads `overall()`), drawn nowhere.
            Display::Lines => (ProgressDrawTarget::hidden(), Some(Vec::new())),
        };
        let multi = MultiProgress::with_draw_target(target);
        let overall = multi.add(ProgressBar::new(0));
        overall.set_style(
            ProgressStyle::with_template("{prefix:.bold} [{bar:40.green/white}] {pos}/{len} jobs done  {msg}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        overall.set_prefix("sweep");
        if lines.is_none() {
            overall.enable_steady_tick(Duration::from_millis(500));
        }
        WatchView {
            multi,
            overall,
            jobs: BTreeMap::new(),
            last_event_id: 0,
            finished: None,
            log: Vec::new(),
            ended: BTreeMap::new(),
            summary: (0, 0, 0),
            lines,
            printed_decile: BTreeMap::new(),
            at: String::new(),
        }
    }

    /// Line mode: the lines of the events applied since the last call (empty in bar mode).
    pub fn take_lines(&mut self) -> Vec<String> {
        self.lines.as_mut().map(std::mem::take).unwrap_or_default()
    }

    fn line(&mut self, text: String) {
        if let Some(lines) = &mut self.lines {
            lines.push(format!("{} {text}", self.at));
        }
    }

    /// "3/42 jobs done · 2 running · 0 failed"
    fn counts_text(&self) -> String {
        let (done, total) = self.overall();
        let (_, _, failed) = self.summary;
        let failed_here = self.ended.values().filter(|s| **s == pb::JobState::Failed as i32).count() as u64;
        format!("{done}/{total} jobs done · {} running · {} failed", self.jobs.len(), failed.max(failed_here))
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
        self.at = timestamp_text(event.at.as_ref());
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
        let line = format!("sweep {} {}: {} · {}", s.sweep_id, s.name, sweep_state_name(s.state), self.counts_text());
        self.line(line);
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
            let eta = eta_text(j);
            let attempt = if j.attempt > 1 { format!(" (attempt {})", j.attempt) } else { String::new() };
            bar.set_message(format!("{eta}{attempt}"));
            self.job_progress_line(j, &worker, &attempt);
        } else if let Some(bar) = self.jobs.remove(&j.job_id) {
            bar.finish_and_clear();
            self.multi.remove(&bar);
            let mut line = format!("{} {}", job_label(j), job_state_name(j.state));
            if !j.error.is_empty() {
                line.push_str(&format!(": {}", j.error));
            }
            if self.lines.is_none() {
                let _ = self.multi.println(&line);
            }
            self.log.push(line.clone());
            self.printed_decile.remove(&j.job_id);
            self.refresh_overall();
            let counts = self.counts_text();
            self.line(format!("{line} ({counts})"));
            return;
        } else if j.state == pb::JobState::Failed as i32 {
            let line = format!("{} failed: {}", job_label(j), j.error);
            if self.lines.is_none() {
                let _ = self.multi.println(&line);
            }
            self.log.push(line.clone());
            self.line(line);
        } else {
            // Blocked, ready (re-queued after a lost lease or a pause), cancelled before it ran.
            self.line(format!("{} {}", job_label(j), job_state_name(j.state)));
        }
        self.refresh_overall();
    }

    /// Line mode: "job 7 l2 rate 0.2 seed 1 level 2 running @ w1" when a job starts, then one line
    /// each time its progress enters a new 10% step.
    fn job_progress_line(&mut self, j: &pb::JobInfo, worker: &str, attempt: &str) {
        if self.lines.is_none() {
            return;
        }
        let progress = j.progress.clamp(0.0, 1.0);
        let decile = (progress * 10.0).floor() as u64;
        let text = match self.printed_decile.get(&j.job_id) {
            None => format!("{} running{worker}{attempt}", job_label(j)),
            Some(last) if decile > *last => {
                let eta = eta_text(j);
                let eta = if eta.is_empty() { String::new() } else { format!(" {eta}") };
                format!("{} {:.0}%{eta}{worker}", job_label(j), (100.0 * progress).floor())
            }
            Some(_) => return,
        };
        self.printed_decile.insert(j.job_id, decile);
        self.line(text);
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
        let mut v = WatchView::new(Display::Bars(ProgressDrawTarget::hidden()));
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

    #[test]
    fn line_mode_prints_one_line_per_event_with_progress_thinned_to_tens() {
        let mut v = WatchView::new(Display::Lines);
        let at = |mut e: pb::SweepEvent, secs: i64| {
            e.at = Some(prost_types::Timestamp { seconds: 1_795_000_000 + secs, nanos: 0 });
            e
        };
        v.apply(&at(sweep(pb::SweepState::Running, 0, 0, 3), 0));
        for (i, p) in [0.0, 0.05, 0.12, 0.18, 0.31, 0.95].iter().enumerate() {
            v.apply(&at(job(1, pb::JobState::Running, *p), 1 + i as i64));
        }
        v.apply(&at(job(1, pb::JobState::Succeeded, 1.0), 9));
        let mut failed = job(2, pb::JobState::Failed, 0.0);
        if let Some(Event::Job(j)) = &mut failed.event {
            j.error = "CUDA out of memory".into();
        }
        v.apply(&at(failed, 10));
        let lines = v.take_lines();
        assert_eq!(
            lines,
            [
                "2026-11-18 11:06:40 sweep 4 demo: running · 0/3 jobs done · 0 running · 0 failed",
                "2026-11-18 11:06:41 job 1 l2 rate 0.2 seed 1 level 1 running @ w1",
                // 5% stays in the first tenth; 12% and 18% share the second; 31%, 95% print.
                "2026-11-18 11:06:43 job 1 l2 rate 0.2 seed 1 level 1 12% ETA 26 seconds @ w1",
                "2026-11-18 11:06:45 job 1 l2 rate 0.2 seed 1 level 1 31% ETA 21 seconds @ w1",
                "2026-11-18 11:06:46 job 1 l2 rate 0.2 seed 1 level 1 95% ETA 2 seconds @ w1",
                "2026-11-18 11:06:49 job 1 l2 rate 0.2 seed 1 level 1 succeeded (1/3 jobs done · 0 running · 0 failed)",
                "2026-11-18 11:06:50 job 2 l2 rate 0.2 seed 1 level 1 failed: CUDA out of memory",
            ]
        );
        assert!(v.take_lines().is_empty(), "lines are taken once");
        // Bar mode keeps no lines.
        let mut bars = WatchView::new(Display::Bars(ProgressDrawTarget::hidden()));
        bars.apply(&job(1, pb::JobState::Running, 0.5));
        assert!(bars.take_lines().is_empty());
    }
}
