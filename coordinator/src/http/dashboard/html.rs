//! HTML helpers: escaping, the page frame, tables' pagination, small widgets.

use chrono::{DateTime, Utc};
use std::fmt::Write;

/// Escapes text for HTML element content and double-quoted attributes.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Who is looking, as the page header shows it.
pub struct Viewer<'a> {
    pub name: &'a str,
    pub role: &'a str,
    /// Tokens are configured: show a log-out button.
    pub sessions: bool,
    pub csrf: &'a str,
}

/// A whole page: header with navigation and the viewer, then `body`.
pub fn page(title: &str, viewer: Option<&Viewer<'_>>, body: &str) -> String {
    let mut s = String::with_capacity(body.len() + 2048);
    let _ = write!(
        s,
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1"><title>{} · lth</title><link rel="stylesheet" href="/assets/app.css"><script src="/assets/app.js" defer></script></head><body><header><a class="brand" href="/">lth</a><nav><a href="/">Sweeps</a><a href="/workers">Workers</a></nav>"#,
        esc(title)
    );
    if let Some(v) = viewer {
        let _ = write!(s, r#"<span class="who">{} <span class="role">{}</span></span>"#, esc(v.name), esc(v.role));
        if v.sessions {
            let _ = write!(s, r#"<form method="post" action="/logout" class="inline"><input type="hidden" name="csrf" value="{}"><button class="link">log out</button></form>"#, esc(v.csrf));
        }
    }
    let _ = write!(s, "</header><main>{body}</main></body></html>");
    s
}

pub fn state_badge(state: &str) -> String {
    format!(r#"<span class="state s-{0}">{0}</span>"#, esc(state))
}

/// A progress bar for `done` of `total`.
pub fn bar(done: i64, total: i64, id: &str) -> String {
    let f = if total > 0 { done as f64 / total as f64 } else { 0.0 };
    format!(
        r#"<span class="bar" id="{}" title="{done} of {total}"><span class="fill" style="width:{:.1}%"></span><span class="label">{done}/{total}</span></span>"#,
        esc(id),
        100.0 * f
    )
}

/// A progress bar for a fraction, labelled in percent.
pub fn pct_bar(fraction: f64, id: &str) -> String {
    let f = fraction.clamp(0.0, 1.0);
    format!(r#"<span class="bar pct" id="{}"><span class="fill" style="width:{:.1}%"></span><span class="label">{:.0}%</span></span>"#, esc(id), 100.0 * f, 100.0 * f)
}

pub fn time(t: DateTime<Utc>) -> String {
    format!(r#"<time datetime="{}">{}</time>"#, t.to_rfc3339(), t.format("%Y-%m-%d %H:%M:%S UTC"))
}

pub fn duration(seconds: f64) -> String {
    if !seconds.is_finite() || seconds < 0.0 {
        return "–".into();
    }
    if seconds < 10.0 {
        return format!("{seconds:.1} s");
    }
    let s = seconds.round() as i64;
    if s < 90 {
        format!("{s} s")
    } else if s < 5400 {
        format!("{} min", (s + 30) / 60)
    } else {
        format!("{:.1} h", seconds / 3600.0)
    }
}

pub fn bytes(n: i64) -> String {
    let n = n as f64;
    if n >= 1024.0 * 1024.0 * 1024.0 {
        format!("{:.2} GiB", n / (1024.0 * 1024.0 * 1024.0))
    } else if n >= 1024.0 * 1024.0 {
        format!("{:.2} MiB", n / (1024.0 * 1024.0))
    } else if n >= 1024.0 {
        format!("{:.1} KiB", n / 1024.0)
    } else {
        format!("{n} B")
    }
}

/// Page links under a table: `base` already holds the other query parameters (ends in ? or &).
pub fn pager(base: &str, param: &str, page: i64, per_page: i64, total: i64) -> String {
    let pages = ((total + per_page - 1) / per_page).max(1);
    if pages <= 1 {
        return String::new();
    }
    let mut s = format!(r#"<nav class="pager" data-param="{}">page {} of {pages} ({total} rows) "#, esc(param), page + 1);
    if page > 0 {
        let _ = write!(s, r#"<a href="{}{param}=0">« first</a> <a href="{}{param}={}" rel="prev">‹ prev</a> "#, esc(base), esc(base), page - 1);
    }
    if page + 1 < pages {
        let _ = write!(s, r#"<a href="{}{param}={}" rel="next">next ›</a> <a href="{}{param}={}">last »</a>"#, esc(base), page + 1, esc(base), pages - 1);
    }
    s.push_str("</nav>");
    s
}

/// An error page body.
pub fn error_body(message: &str) -> String {
    format!(r#"<div class="error"><h1>Cannot show this page</h1><p>{}</p></div>"#, esc(message))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(esc(r#"<a href="x">'&'</a>"#), "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;");
    }

    #[test]
    fn pager_links_pages() {
        assert_eq!(pager("/x?", "p", 0, 50, 50), "");
        let p = pager("/x?state=failed&", "p", 1, 50, 151);
        assert!(p.contains("page 2 of 4") && p.contains("p=0") && p.contains("p=2") && p.contains("p=3"), "{p}");
    }
}
