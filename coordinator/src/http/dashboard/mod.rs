//! The web dashboard on the coordinator's HTTP port: server-rendered pages, inline SVG plots and
//! Server-Sent Events for live progress; every asset is embedded in the binary (no CDN).
//!
//! Pages (all GET, all read-only, all need a viewer or higher when tokens are configured):
//! - `/` Sweeps: state, owner, progress, training time, ETA; `?state=` filters, `?page=` pages.
//! - `/sweeps/{id}` Sweep: progress per metric (live), accuracy vs weights remaining, per-layer
//!   kept-fraction heatmaps, the ticket-overlap matrix at `?level=`, dead-unit / collapse warnings,
//!   running jobs with worker and images/s, failed jobs with their errors, every job (paged), and
//!   the pause / resume / cancel / retry buttons for callers whose role allows them (retry: the
//!   failed jobs go back to the queue with fresh attempts, as `lthctl retry` does).
//! - `/sweeps/{id}/live`: the SSE stream (`live.rs`); `/sweeps/{id}/fragment`: the plots and job
//!   tables alone, which the page re-fetches when a job changes state.
//! - `/jobs/{id}` Job: per-epoch curves from progress events, attempts, artifacts, result.
//! - `/workers` Workers: slots, CPUs, GPUs, current jobs, last heartbeat, health.
//! - `POST /sweeps/{id}/control` (action = pause | resume | cancel | retry), `/login`, `/logout`
//!   (`session.rs`: cookies, CSRF, origin check).
//!
//! Aggregation happens in SQL, through the views of docs/sql.md (`Store::accuracy`, the
//! `dashboard_*` queries in `store/dashboard.rs`); tables are paged, so a sweep of 10,000 jobs
//! renders as fast as one of 10 (BENCHMARKS.md).

pub mod html;
mod live;
pub mod session;
pub mod svg;

use crate::auth::{allows, Need, Role};
use crate::http::HttpState;
use crate::store::{JobRow, StoreError, SweepInfo};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use html::{bar, esc, page, state_badge, Viewer};
use session::Caller;
use std::collections::HashMap;
use std::fmt::Write;
use std::sync::Arc;

const PER_PAGE: i64 = 50;
const APP_CSS: &str = include_str!("assets/app.css");
const APP_JS: &str = include_str!("assets/app.js");

/// The dashboard's routes, merged into the HTTP port's router.
pub fn routes() -> Router<Arc<HttpState>> {
    Router::new()
        .route("/", get(sweeps_page))
        .route("/sweeps", get(sweeps_page))
        .route("/sweeps/{id}", get(sweep_page))
        .route("/sweeps/{id}/fragment", get(sweep_fragment))
        .route("/sweeps/{id}/live", get(live::live))
        .route("/sweeps/{id}/control", post(sweep_control))
        .route("/jobs/{id}", get(job_page))
        .route("/workers", get(workers_page))
        .route("/login", get(login_form).post(login_post))
        .route("/logout", post(logout_post))
        .route("/assets/app.css", get(|| async { ([(header::CONTENT_TYPE, "text/css; charset=utf-8"), (header::CACHE_CONTROL, "max-age=300")], APP_CSS) }))
        .route("/assets/app.js", get(|| async { ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8"), (header::CACHE_CONTROL, "max-age=300")], APP_JS) }))
}

type Params = Query<HashMap<String, String>>;

fn param_i64(q: &HashMap<String, String>, key: &str) -> Option<i64> {
    q.get(key).and_then(|v| v.parse().ok())
}

fn viewer(c: &Caller) -> Viewer<'_> {
    Viewer { name: &c.identity.name, role: c.identity.role.as_str(), sessions: c.session, csrf: &c.csrf }
}

fn html_page(c: &Caller, title: &str, body: &str) -> Response {
    ([(header::CACHE_CONTROL, "no-store")], Html(page(title, Some(&viewer(c)), body))).into_response()
}

/// A store error as a page (not found: 404; a refusal: 409; the database: 503).
fn store_error(c: Option<&Caller>, e: StoreError) -> Response {
    let code = match &e {
        StoreError::NotFound(_) => StatusCode::NOT_FOUND,
        StoreError::FailedPrecondition(_) => StatusCode::CONFLICT,
        StoreError::InvalidArgument(_) => StatusCode::BAD_REQUEST,
        _ => {
            tracing::error!(error = %e, "dashboard: store error");
            StatusCode::SERVICE_UNAVAILABLE
        }
    };
    (code, Html(page("error", c.map(viewer).as_ref(), &html::error_body(&e.to_string())))).into_response()
}

const SWEEP_STATES: [&str; 5] = ["running", "paused", "succeeded", "failed", "cancelled"];
const JOB_STATES: [&str; 6] = ["blocked", "ready", "running", "succeeded", "failed", "cancelled"];

// ---------------------------------------------------------------------------------------------
// Sweeps
// ---------------------------------------------------------------------------------------------

async fn sweeps_page(State(st): State<Arc<HttpState>>, c: Caller, Query(q): Params) -> Response {
    let state = q.get("state").map(String::as_str).filter(|s| SWEEP_STATES.contains(s));
    let pg = param_i64(&q, "page").unwrap_or(0).max(0);
    let (rows, total) = match st.coord.store.dashboard_sweeps(state, PER_PAGE, pg * PER_PAGE).await {
        Ok(r) => r,
        Err(e) => return store_error(Some(&c), e),
    };
    let mut b = String::from("<h1>Sweeps</h1><nav class=\"filter\">state: ");
    let _ = write!(b, r#"<a href="/"{}>all</a>"#, if state.is_none() { r#" class="on""# } else { "" });
    for s in SWEEP_STATES {
        let _ = write!(b, r#" <a href="/?state={s}"{}>{s}</a>"#, if state == Some(s) { r#" class="on""# } else { "" });
    }
    b.push_str("</nav>");
    if rows.is_empty() {
        b.push_str("<p class=\"empty\">No sweeps. Submit one with <code>lthctl submit sweep.toml</code>.</p>");
    } else {
        b.push_str("<table id=\"sweeps\"><thead><tr><th>id</th><th>name</th><th>state</th><th>owner</th><th>progress</th><th>running</th><th>failed</th><th>training time</th><th>ETA</th><th>created</th></tr></thead><tbody>");
        for r in &rows {
            let open = r.jobs - r.succeeded - r.failed;
            let eta = match (r.state.as_str(), r.mean_job_seconds) {
                ("running", Some(m)) if r.running > 0 && open > 0 => format!("~{}", html::duration(m * open as f64 / r.running as f64)),
                _ => "–".into(),
            };
            let _ = write!(
                b,
                r#"<tr data-sweep="{id}"><td><a href="/sweeps/{id}">{id}</a></td><td><a href="/sweeps/{id}">{}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td title="sum of the succeeded jobs' training wall time">{}</td><td>{eta}</td><td>{}</td></tr>"#,
                esc(&r.name),
                state_badge(&r.state),
                esc(r.owner.as_deref().unwrap_or("–")),
                bar(r.succeeded, r.jobs, &format!("p-sweep-{}", r.id)),
                r.running,
                r.failed,
                html::duration(r.compute_seconds),
                html::time(r.created_at),
                id = r.id,
            );
        }
        b.push_str("</tbody></table>");
        let base = match state {
            Some(s) => format!("/?state={s}&"),
            None => "/?".into(),
        };
        b.push_str(&html::pager(&base, "page", pg, PER_PAGE, total));
    }
    b.push_str("<p class=\"note\">Training time: the sum of the succeeded jobs' wall time on their workers (GPU-hours on GPU workers). ETA: open jobs × mean job time ÷ running jobs.</p>");
    html_page(&c, "Sweeps", &b)
}

// ---------------------------------------------------------------------------------------------
// Sweep
// ---------------------------------------------------------------------------------------------

/// May this caller pause, resume, cancel and retry this sweep? (submitter: its own; admin: any;
/// the same rule as the gRPC port's `check_owner`)
fn may_change(c: &Caller, s: &SweepInfo) -> bool {
    allows(c.identity.role, Need::Submit) && (c.identity.role == Role::Admin || s.owner.as_deref() == Some(c.identity.name.as_str()))
}

/// Is there something for the retry button to do? Failed jobs, in a sweep whose state allows a
/// retry (`SweepState::allows`, the rule `Store::retry_sweep` applies: not a cancelled one).
fn may_retry(s: &SweepInfo) -> bool {
    use lth_sweep::state::{SweepOp, SweepState, Verdict};
    s.jobs.failed > 0 && s.state.parse::<SweepState>().is_ok_and(|st| st.allows(SweepOp::Retry, s.id) == Verdict::Proceed)
}

/// The deepest level every metric of a rate reached (the default overlap level), over all rates.
fn default_overlap_level(acc: &[crate::store::AccuracyRow]) -> Option<i32> {
    let mut deepest: HashMap<(u64, &str), i32> = HashMap::new();
    for a in acc {
        let d = deepest.entry((a.rate.to_bits(), a.metric.as_str())).or_insert(0);
        *d = (*d).max(a.level);
    }
    let mut by_rate: HashMap<u64, Vec<i32>> = HashMap::new();
    for ((rate, _), l) in deepest {
        by_rate.entry(rate).or_default().push(l);
    }
    by_rate.values().filter(|ls| ls.len() >= 2).filter_map(|ls| ls.iter().min().copied()).filter(|l| *l > 0).max()
}

fn progress_section(s: &SweepInfo) -> String {
    let j = &s.jobs;
    let total = (j.blocked + j.ready + j.running + j.succeeded + j.failed + j.cancelled) as i64;
    let mut b = String::from("<section id=\"progress\"><h2>Progress</h2><div class=\"overall\">");
    b.push_str(&bar(j.succeeded as i64, total, "p-all"));
    b.push_str("</div><table class=\"counts\"><tr>");
    for st in JOB_STATES {
        let _ = write!(b, "<th>{st}</th>");
    }
    b.push_str("</tr><tr>");
    for (st, n) in JOB_STATES.iter().zip([j.blocked, j.ready, j.running, j.succeeded, j.failed, j.cancelled]) {
        let _ = write!(b, r#"<td id="c-{st}">{n}</td>"#);
    }
    b.push_str("</tr></table><table class=\"metrics\"><thead><tr><th>metric</th><th>level jobs succeeded</th></tr></thead><tbody>");
    let mut metrics = s.metrics.clone();
    metrics.sort_by_key(|(m, _, _)| svg::metric_rank(m));
    for (m, total, done) in &metrics {
        let _ = write!(
            b,
            r#"<tr><td><span class="swatch" style="background:{}"></span>{}</td><td>{}</td></tr>"#,
            svg::metric_color(m),
            esc(m),
            bar(*done as i64, *total as i64, &format!("p-m-{m}"))
        );
    }
    b.push_str("</tbody></table></section>");
    b
}

fn job_label(j: &JobRow) -> String {
    if j.kind == "dense" {
        format!("dense seed {}", j.seed)
    } else {
        format!(
            "{} rate {} seed {} level {}{}",
            j.metric.as_deref().unwrap_or("?"),
            j.rate,
            j.seed,
            j.level,
            j.control.as_deref().map(|c| format!(" ({c})")).unwrap_or_default()
        )
    }
}

/// The parts of the sweep page that change as jobs finish: plots, warnings, job tables.
async fn fragment(st: &HttpState, id: i64, q: &HashMap<String, String>) -> Result<String, StoreError> {
    let store = &st.coord.store;
    let acc = store.accuracy(id).await?;
    let mut b = String::new();
    b.push_str("<section id=\"accuracy\"><h2>Accuracy vs weights remaining</h2><p class=\"note\">Mean ± std over seeds; colour = metric, line style = rate; grey dashed = the dense network. Hover a point for its numbers.</p>");
    b.push_str(&svg::accuracy_plot(&acc));
    b.push_str("</section>");

    let warnings = store.dashboard_collapse(id, 200).await?;
    if !warnings.is_empty() {
        b.push_str("<section id=\"warnings\"><h2>Dead units and collapse</h2><ul class=\"warnings\">");
        for w in &warnings {
            let _ = write!(b, "<li>{} rate {} seed {}: from level {}: {}</li>", esc(&w.metric), w.rate, w.seed, w.first_level, esc(&w.what));
        }
        b.push_str("</ul></section>");
    }

    let kept = store.dashboard_kept(id).await?;
    b.push_str("<section id=\"layers\"><h2>Weights kept per layer</h2><p class=\"note\">Percent of each layer's weights kept at each level (mean over seeds), layers in network order.</p>");
    b.push_str(&svg::kept_heatmap(&kept));
    b.push_str("</section>");

    let mut levels: Vec<i32> = acc.iter().map(|a| a.level).filter(|l| *l > 0).collect();
    levels.sort();
    levels.dedup();
    let level = q.get("level").and_then(|l| l.parse::<i32>().ok()).or_else(|| default_overlap_level(&acc));
    b.push_str("<section id=\"overlap\"><h2>Ticket overlap</h2>");
    if let Some(level) = level {
        let _ = write!(b, r#"<form method="get" action="/sweeps/{id}" class="inline">level <select name="level" onchange="this.form.submit()">"#);
        for l in &levels {
            let _ = write!(b, r#"<option value="{l}"{}>{l}</option>"#, if *l == level { " selected" } else { "" });
        }
        b.push_str("</select> <noscript><button>show</button></noscript></form>");
        b.push_str(&svg::overlap_matrix(&store.dashboard_overlap(id, level).await?, level));
    } else {
        b.push_str("<p class=\"empty\">Needs two metrics with tickets at a common level.</p>");
    }
    b.push_str("</section>");

    let running = store.dashboard_running(id, 200).await?;
    let _ = write!(b, "<section id=\"running\"><h2>Running jobs ({})</h2>", running.len());
    if running.is_empty() {
        b.push_str("<p class=\"empty\">None.</p>");
    } else {
        b.push_str("<table><thead><tr><th>job</th><th>what</th><th>attempt</th><th>worker</th><th>progress</th><th>images/s</th><th>ETA</th></tr></thead><tbody>");
        for r in &running {
            let j = &r.job;
            let _ = write!(
                b,
                r#"<tr data-job="{id}"><td><a href="/jobs/{id}">{id}</a></td><td>{}</td><td>{}</td><td>{}</td><td class="jp">{}</td><td>{}</td><td>{}</td></tr>"#,
                esc(&job_label(j)),
                j.attempt,
                esc(j.worker_id.as_deref().unwrap_or("–")),
                html::pct_bar(j.progress, &format!("p-job-{}", j.id)),
                r.images_per_second.map(|v| format!("{v:.0}")).unwrap_or_else(|| "–".into()),
                j.eta_seconds.map(html::duration).unwrap_or_else(|| "–".into()),
                id = j.id
            );
        }
        b.push_str("</tbody></table>");
    }
    b.push_str("</section>");

    let fp = param_i64(q, "failed_page").unwrap_or(0).max(0);
    let (failed, failed_total) = store.dashboard_jobs(id, Some("failed"), PER_PAGE, fp * PER_PAGE).await?;
    let _ = write!(b, "<section id=\"failed\"><h2>Failed jobs ({failed_total})</h2>");
    if failed.is_empty() {
        b.push_str("<p class=\"empty\">None.</p>");
    } else {
        b.push_str("<table><thead><tr><th>job</th><th>what</th><th>attempts</th><th>errors</th><th>lost</th><th>last error</th></tr></thead><tbody>");
        for j in &failed {
            let _ = write!(
                b,
                r#"<tr><td><a href="/jobs/{id}">{id}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class="err">{}</td></tr>"#,
                esc(&job_label(j)),
                j.attempt,
                j.error_count,
                j.lost_count,
                esc(j.last_error.as_deref().unwrap_or("")),
                id = j.id
            );
        }
        b.push_str("</tbody></table>");
        b.push_str(&html::pager(&format!("/sweeps/{id}?"), "failed_page", fp, PER_PAGE, failed_total));
    }
    b.push_str("</section>");

    let js = q.get("jobs").map(String::as_str).filter(|s| JOB_STATES.contains(s));
    let jp = param_i64(q, "jobs_page").unwrap_or(0).max(0);
    let (jobs, jobs_total) = store.dashboard_jobs(id, js, PER_PAGE, jp * PER_PAGE).await?;
    let _ = write!(b, "<section id=\"jobs\"><h2>Jobs ({jobs_total})</h2><nav class=\"filter\">state: ");
    let _ = write!(b, r##"<a href="/sweeps/{id}#jobs"{}>all</a>"##, if js.is_none() { r#" class="on""# } else { "" });
    for s in JOB_STATES {
        let _ = write!(b, r##" <a href="/sweeps/{id}?jobs={s}#jobs"{}>{s}</a>"##, if js == Some(s) { r#" class="on""# } else { "" });
    }
    b.push_str("</nav><table><thead><tr><th>job</th><th>kind</th><th>what</th><th>state</th><th>attempt</th><th>worker</th><th>progress</th></tr></thead><tbody>");
    for j in &jobs {
        let _ = write!(
            b,
            r#"<tr data-job="{id}"><td><a href="/jobs/{id}">{id}</a></td><td>{}</td><td>{}</td><td class="js">{}</td><td>{}</td><td>{}</td><td>{:.0}%</td></tr>"#,
            esc(&j.kind),
            esc(&job_label(j)),
            state_badge(&j.state),
            j.attempt,
            esc(j.worker_id.as_deref().unwrap_or("–")),
            100.0 * j.progress,
            id = j.id
        );
    }
    b.push_str("</tbody></table>");
    let base = match js {
        Some(s) => format!("/sweeps/{id}?jobs={s}&"),
        None => format!("/sweeps/{id}?"),
    };
    b.push_str(&html::pager(&base, "jobs_page", jp, PER_PAGE, jobs_total));
    b.push_str("</section>");
    Ok(b)
}

async fn sweep_page(State(st): State<Arc<HttpState>>, c: Caller, Path(id): Path<i64>, Query(q): Params) -> Response {
    let s = match st.coord.store.get_sweep(id).await {
        Ok(s) => s,
        Err(e) => return store_error(Some(&c), e),
    };
    let last_event = match st.coord.store.last_event_id(id).await {
        Ok(e) => e,
        Err(e) => return store_error(Some(&c), e),
    };
    let frag = match fragment(&st, id, &q).await {
        Ok(f) => f,
        Err(e) => return store_error(Some(&c), e),
    };
    let mut b = String::new();
    let _ = write!(
        b,
        r#"<div class="sweep" data-sweep="{id}" data-after="{last_event}" data-state="{}"><h1>Sweep {id}: {}</h1><p class="meta"><span id="sweep-state">{}</span> · owner {} · {} trials · created {}{}</p>"#,
        esc(&s.state),
        esc(&s.name),
        state_badge(&s.state),
        esc(s.owner.as_deref().unwrap_or("–")),
        s.trials,
        html::time(s.created_at),
        s.finished_at.map(|t| format!(" · finished {}", html::time(t))).unwrap_or_default()
    );
    if may_change(&c, &s) {
        let _ = write!(b, r#"<form method="post" action="/sweeps/{id}/control" class="controls"><input type="hidden" name="csrf" value="{}">"#, esc(&c.csrf));
        let terminal = matches!(s.state.as_str(), "succeeded" | "failed" | "cancelled");
        let _ = write!(b, r#"<button name="action" value="pause" id="btn-pause"{}>pause</button>"#, if s.state != "running" { " disabled" } else { "" });
        let _ = write!(b, r#"<button name="action" value="resume" id="btn-resume"{}>resume</button>"#, if s.state != "paused" { " disabled" } else { "" });
        let _ = write!(
            b,
            r#"<button name="action" value="cancel" id="btn-cancel" class="danger" data-confirm="Cancel sweep {id}? Unfinished jobs stop; results so far stay."{}>cancel</button>"#,
            if terminal { " disabled" } else { "" }
        );
        let failed = s.jobs.failed;
        let _ = write!(
            b,
            r#"<button name="action" value="retry" id="btn-retry" data-failed="{failed}" title="Re-queue the failed jobs (and the jobs waiting on them) with fresh attempts, as lthctl retry {id} does"{}>retry {failed} failed</button>"#,
            if may_retry(&s) { "" } else { " disabled" }
        );
        b.push_str("</form>");
    } else {
        b.push_str(r#"<p class="note" id="read-only">Read-only: pausing, resuming, cancelling and retrying need a submitter token (own sweeps) or an admin token.</p>"#);
    }
    if let Some(n) = param_i64(&q, "retried") {
        if n > 0 {
            let _ = write!(b, r#"<p class="note" id="retried" data-jobs="{n}">Re-queued {n} failed job(s) with fresh attempts.</p>"#);
        } else {
            b.push_str(r#"<p class="note" id="retried" data-jobs="0">No failed jobs to retry.</p>"#);
        }
    }
    b.push_str(&progress_section(&s));
    let _ = write!(b, r#"<div id="fragment">{frag}</div></div>"#);
    html_page(&c, &format!("sweep {id}"), &b)
}

async fn sweep_fragment(State(st): State<Arc<HttpState>>, c: Caller, Path(id): Path<i64>, Query(q): Params) -> Response {
    match fragment(&st, id, &q).await {
        Ok(f) => ([(header::CACHE_CONTROL, "no-store")], Html(f)).into_response(),
        Err(e) => store_error(Some(&c), e),
    }
}

fn form(body: &[u8]) -> HashMap<String, String> {
    url::form_urlencoded::parse(body).into_owned().collect()
}

async fn sweep_control(State(st): State<Arc<HttpState>>, Path(id): Path<i64>, headers: HeaderMap, body: Bytes) -> Response {
    let f = form(&body);
    let c = match session::post_caller(&st, &headers, f.get("csrf").map(String::as_str).unwrap_or("")) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let action = f.get("action").map(String::as_str).unwrap_or("");
    if !matches!(action, "pause" | "resume" | "cancel" | "retry") {
        return session::refuse(StatusCode::BAD_REQUEST, &format!("unknown action {action:?}: use pause, resume, cancel or retry"));
    }
    let s = match st.coord.store.get_sweep(id).await {
        Ok(s) => s,
        Err(e) => return store_error(Some(&c), e),
    };
    if !may_change(&c, &s) {
        tracing::warn!(target: "lth::audit", who = %c.identity.name, role = c.identity.role.as_str(), action, sweep_id = id, "dashboard action refused");
        let why = if allows(c.identity.role, Need::Submit) {
            format!(
                "sweep {id} belongs to {}: a submitter token ({:?}) may {action} only its own sweeps; this needs role admin",
                s.owner.as_deref().unwrap_or("no recorded owner"),
                c.identity.name
            )
        } else {
            format!("{action} needs role submitter (own sweeps) or admin; the token {:?} has role {}", c.identity.name, c.identity.role.as_str())
        };
        return session::refuse(StatusCode::FORBIDDEN, &why);
    }
    let store = &st.coord.store;
    let done = match action {
        "pause" => store.pause_sweep(id).await.map(|()| None),
        "resume" => store.resume_sweep(id).await.map(|()| None),
        "retry" => store.retry_sweep(id, None).await.map(Some),
        _ => store.cancel_sweep(id).await.map(|()| None),
    };
    let retried = match done {
        Ok(r) => r,
        Err(e) => return store_error(Some(&c), e),
    };
    tracing::info!(target: "lth::audit", who = %c.identity.name, role = c.identity.role.as_str(), action, sweep_id = id, via = "dashboard", "audit");
    match retried {
        Some(n) => {
            tracing::info!(sweep_id = id, jobs = n, via = "dashboard", "failed jobs re-queued");
            Redirect::to(&format!("/sweeps/{id}?retried={n}")).into_response()
        }
        None => Redirect::to(&format!("/sweeps/{id}")).into_response(),
    }
}

// ---------------------------------------------------------------------------------------------
// Job
// ---------------------------------------------------------------------------------------------

async fn job_page(State(st): State<Arc<HttpState>>, c: Caller, Path(id): Path<i64>) -> Response {
    let store = &st.coord.store;
    let r = async {
        let j = store.get_job(id).await?;
        let progress = store.dashboard_progress(id, 2000).await?;
        let attempts = store.dashboard_attempts(id).await?;
        let artifacts = store.dashboard_artifacts(id).await?;
        let result = store.dashboard_job_result(id).await?;
        Ok::<_, StoreError>((j, progress, attempts, artifacts, result))
    }
    .await;
    let (j, progress, attempts, artifacts, result) = match r {
        Ok(x) => x,
        Err(e) => return store_error(Some(&c), e),
    };
    let mut b = String::new();
    let _ = write!(
        b,
        r#"<h1>Job {id}: {}</h1><p class="meta">{} · <a href="/sweeps/{sw}">sweep {sw}</a> · attempt {} · worker {} · progress {:.0}%{}</p>"#,
        esc(&job_label(&j)),
        state_badge(&j.state),
        j.attempt,
        esc(j.worker_id.as_deref().unwrap_or("–")),
        100.0 * j.progress,
        j.eta_seconds.filter(|_| j.state == "running").map(|e| format!(" · ETA {}", html::duration(e))).unwrap_or_default(),
        sw = j.sweep_id
    );
    b.push_str("<table class=\"kv\">");
    let mut kv = |k: &str, v: String| {
        let _ = write!(b, "<tr><th>{k}</th><td>{v}</td></tr>");
    };
    kv("kind", esc(&j.kind));
    kv("content hash", format!("<code>{}</code>", esc(&j.content_hash)));
    if let Some(p) = j.parent_job_id {
        kv("parent", format!(r#"<a href="/jobs/{p}">job {p}</a>"#));
    }
    if let Some(r) = j.reused_from {
        kv("reused from", format!(r#"<a href="/jobs/{r}">job {r}</a> (same content hash: not run again)"#));
    }
    kv("errors / lost", format!("{} / {}", j.error_count, j.lost_count));
    if let Some(e) = &j.last_error {
        kv("last error", format!(r#"<span class="err">{}</span>"#, esc(e)));
    }
    if let Some(r) = &result {
        kv(
            "result",
            format!(
                "test accuracy {:.2}% · test loss {:.4} · train loss {:.4} · sparsity {:.2}% · {:.2} epochs in {}",
                100.0 * r.test_accuracy,
                r.test_loss,
                r.train_loss,
                100.0 * r.sparsity,
                r.epochs,
                html::duration(r.wall_seconds)
            ),
        );
    }
    b.push_str("</table>");
    let _ = write!(b, "<section id=\"curves\"><h2>Training curves</h2><p class=\"note\">From the worker's progress reports ({} of them).</p>{}</section>", progress.len(), svg::job_curves(&progress));
    b.push_str("<section id=\"attempts\"><h2>Attempts</h2>");
    if attempts.is_empty() {
        b.push_str("<p class=\"empty\">Not claimed yet.</p>");
    } else {
        b.push_str("<table><thead><tr><th>attempt</th><th>worker</th><th>started</th><th>finished</th><th>outcome</th><th>error</th></tr></thead><tbody>");
        for a in &attempts {
            let _ = write!(
                b,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"err\">{}</td></tr>",
                a.attempt,
                esc(&a.worker_id),
                html::time(a.started_at),
                a.finished_at.map(html::time).unwrap_or_else(|| "–".into()),
                state_badge(&a.outcome),
                esc(a.error.as_deref().unwrap_or(""))
            );
        }
        b.push_str("</tbody></table>");
    }
    b.push_str("</section><section id=\"artifacts\"><h2>Artifacts</h2>");
    if artifacts.is_empty() {
        b.push_str("<p class=\"empty\">None stored.</p>");
    } else {
        b.push_str("<table><thead><tr><th>name</th><th>attempt</th><th>size</th><th>sha256</th><th>stored</th></tr></thead><tbody>");
        for a in &artifacts {
            let _ = write!(
                b,
                r#"<tr><td>{}</td><td>{}</td><td title="{} bytes">{}</td><td><code>{}</code></td><td title="{}">{}</td></tr>"#,
                esc(&a.name),
                a.attempt,
                a.bytes,
                html::bytes(a.bytes),
                esc(&a.sha256),
                esc(&a.uri),
                html::time(a.created_at)
            );
        }
        b.push_str("</tbody></table>");
    }
    b.push_str("</section>");
    html_page(&c, &format!("job {id}"), &b)
}

// ---------------------------------------------------------------------------------------------
// Workers
// ---------------------------------------------------------------------------------------------

async fn workers_page(State(st): State<Arc<HttpState>>, c: Caller) -> Response {
    let store = &st.coord.store;
    let window = st.coord.opts.heartbeat * 3;
    let (workers, jobs) = match tokio::try_join!(store.list_workers(window), store.dashboard_worker_jobs(5000)) {
        Ok(x) => x,
        Err(e) => return store_error(Some(&c), e),
    };
    let mut by_worker: HashMap<&str, Vec<(i64, i64)>> = HashMap::new();
    for (w, j, s) in &jobs {
        by_worker.entry(w.as_str()).or_default().push((*j, *s));
    }
    let mut b = String::from("<h1>Workers</h1>");
    if workers.is_empty() {
        b.push_str("<p class=\"empty\">No worker has registered. Start one with <code>lth-worker daemon --coordinator URL</code>.</p>");
    } else {
        let _ = write!(b, "<p class=\"note\">Alive: a heartbeat within the last {} s. Utilisation is not reported by workers; running jobs ÷ slots shows how busy each is.</p>", window.as_secs());
        b.push_str("<table id=\"workers\"><thead><tr><th>worker</th><th>host</th><th>health</th><th>slots</th><th>busy</th><th>CPUs</th><th>GPUs</th><th>current jobs</th><th>last heartbeat</th><th>libtorch / CUDA</th></tr></thead><tbody>");
        for w in &workers {
            let current = by_worker.get(w.reg.worker_id.as_str()).map(Vec::as_slice).unwrap_or(&[]);
            let links: Vec<String> = current.iter().map(|(j, s)| format!(r#"<a href="/jobs/{j}">{j}</a> (<a href="/sweeps/{s}">sweep {s}</a>)"#)).collect();
            let gpus: Vec<String> = w.reg.gpus.iter().map(|g| format!("{}: {} ({})", g.index, esc(&g.name), html::bytes(g.memory_bytes as i64))).collect();
            let _ = write!(
                b,
                r#"<tr data-worker="{}"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{} / {}</td></tr>"#,
                esc(&w.reg.worker_id),
                esc(&w.reg.worker_id),
                esc(&w.reg.host),
                match &w.unhealthy {
                    // Stopped claiming: its reason (a missing dataset path, a full disk, …) as hover text.
                    Some(why) if w.alive => format!(r#"<span title="{}">{}</span>"#, esc(why), state_badge("unhealthy")),
                    _ => state_badge(if w.alive { "alive" } else { "silent" }),
                },
                w.reg.slots,
                bar(w.running_jobs as i64, w.reg.slots as i64, &format!("p-w-{}", w.reg.worker_id)),
                w.reg.cpus,
                if gpus.is_empty() { "none (CPU)".to_string() } else { gpus.join("<br>") },
                if links.is_empty() { "–".to_string() } else { links.join(", ") },
                html::time(w.last_seen),
                esc(if w.reg.libtorch_version.is_empty() { "?" } else { &w.reg.libtorch_version }),
                esc(if w.reg.cuda_version.is_empty() { "none" } else { &w.reg.cuda_version })
            );
        }
        b.push_str("</tbody></table>");
    }
    html_page(&c, "Workers", &b)
}

// ---------------------------------------------------------------------------------------------
// Login
// ---------------------------------------------------------------------------------------------

fn safe_next(next: Option<&String>) -> String {
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.contains('\\') => n.clone(),
        _ => "/".into(),
    }
}

fn login_page(next: &str, error: Option<&str>) -> String {
    let mut b = String::from("<div class=\"login\"><h1>Log in</h1><p>This coordinator has tokens configured. Paste a viewer, submitter or admin token (<code>lth-coordinator token create --role viewer --name NAME</code> makes one); the dashboard keeps a session cookie, not the token.</p>");
    if let Some(e) = error {
        let _ = write!(b, r#"<p class="error" id="login-error">{}</p>"#, esc(e));
    }
    let _ = write!(
        b,
        r#"<form method="post" action="/login"><input type="hidden" name="next" value="{}"><input type="password" name="token" id="token" placeholder="lth_…" autocomplete="off" required autofocus><button id="login">log in</button></form></div>"#,
        esc(next)
    );
    page("log in", None, &b)
}

async fn login_form(State(st): State<Arc<HttpState>>, Query(q): Params) -> Response {
    if st.auth.tokens.is_none() {
        return Redirect::to(&safe_next(q.get("next"))).into_response();
    }
    Html(login_page(&safe_next(q.get("next")), None)).into_response()
}

async fn login_post(State(st): State<Arc<HttpState>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(r) = session::same_origin(&headers) {
        return r;
    }
    let f = form(&body);
    let next = safe_next(f.get("next"));
    match session::login(&st, f.get("token").map(String::as_str).unwrap_or("")) {
        Ok(cookie) => ([(header::SET_COOKIE, cookie)], Redirect::to(&next)).into_response(),
        Err((code, msg)) => (code, Html(login_page(&next, Some(&msg)))).into_response(),
    }
}

async fn logout_post(State(st): State<Arc<HttpState>>, headers: HeaderMap, body: Bytes) -> Response {
    let f = form(&body);
    if let Err(r) = session::post_caller(&st, &headers, f.get("csrf").map(String::as_str).unwrap_or("")) {
        return r;
    }
    ([(header::SET_COOKIE, session::logout(&headers))], Redirect::to("/login")).into_response()
}
