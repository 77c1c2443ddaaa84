//! Who is looking at the dashboard: sessions, the login form, and the CSRF defence of its POSTs.
//!
//! - No tokens configured (the loopback default): every caller is the anonymous admin, as on the
//!   gRPC port; there is no login.
//! - Tokens configured: `/login` asks once for a token (viewer, submitter or admin; a worker
//!   token is refused), checks it with the gRPC port's [`Tokens::lookup`] and sets a session
//!   cookie: an opaque random id (256 bits) mapped in memory to the identity, `HttpOnly`,
//!   `SameSite=Strict`, expiring after [`SESSION_TTL`]. The token itself is never stored. A
//!   `Authorization: Bearer` header is accepted on GETs too (scripts, the benchmark).
//! - Every POST (login, logout, pause/resume/cancel/retry) needs an `Origin` (or, without one, a
//!   `Referer`) of this very host, and every POST but the login the session's CSRF token (a second
//!   random value, in a hidden form field, compared in constant time). Without tokens the CSRF
//!   token is one random value per process.
//!
//! Sessions live in this process's memory: a coordinator restart logs everyone out.

use crate::auth::{allows, Identity, Need};
use crate::http::HttpState;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;

pub const COOKIE: &str = "lth_session";
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// More live sessions than this and the oldest are dropped (only valid tokens create them).
const MAX_SESSIONS: usize = 10_000;

struct Session {
    identity: Identity,
    csrf: String,
    expires: Instant,
}

static SESSIONS: LazyLock<Mutex<HashMap<String, Session>>> = LazyLock::new(|| Mutex::new(HashMap::new()));
/// The CSRF token when no tokens are configured (no sessions).
static OPEN_CSRF: LazyLock<String> = LazyLock::new(random_hex);

fn random_hex() -> String {
    use rand::RngCore;
    let mut b = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

/// The dashboard's caller: who, and the CSRF token its forms must send back.
#[derive(Debug, Clone)]
pub struct Caller {
    pub identity: Identity,
    pub csrf: String,
    /// Logged in through a session (tokens are configured).
    pub session: bool,
}

fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The caller of a request, or None when tokens are on and it carries no valid session.
pub fn caller(state: &HttpState, headers: &HeaderMap) -> Option<Caller> {
    let Some(tokens) = &state.auth.tokens else {
        return Some(Caller { identity: Identity::anonymous(), csrf: OPEN_CSRF.clone(), session: false });
    };
    if let Some(id) = cookie_value(headers, COOKIE) {
        let mut sessions = SESSIONS.lock().unwrap();
        if let Some(s) = sessions.get(id) {
            if s.expires > Instant::now() {
                return Some(Caller { identity: s.identity.clone(), csrf: s.csrf.clone(), session: true });
            }
            sessions.remove(id);
        }
    }
    let bearer = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer ")).map(str::trim)?;
    let identity = tokens.lookup(bearer).filter(|i| allows(i.role, Need::View))?;
    // A bearer caller has no session: its CSRF token matches nothing, so it cannot POST.
    Some(Caller { identity, csrf: String::new(), session: false })
}

/// Pages extract a [`Caller`]; without one a browser is sent to the login form.
impl FromRequestParts<Arc<HttpState>> for Caller {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<HttpState>) -> Result<Self, Self::Rejection> {
        match caller(state, &parts.headers) {
            Some(c) => Ok(c),
            None => {
                let next = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
                let next: String = url::form_urlencoded::byte_serialize(next.as_bytes()).collect();
                Err(Redirect::to(&format!("/login?next={next}")).into_response())
            }
        }
    }
}

/// Refuses a POST whose Origin (or Referer) is not this host: a page elsewhere cannot make the
/// browser post here.
pub fn same_origin(headers: &HeaderMap) -> Result<(), Response> {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
    let from = headers
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| headers.get(header::REFERER).and_then(|v| v.to_str().ok()).and_then(|r| url::Url::parse(r).ok()).map(|u| u.origin().ascii_serialization()));
    let ok = match &from {
        Some(o) => !host.is_empty() && (*o == format!("http://{host}") || *o == format!("https://{host}")),
        None => false,
    };
    if ok {
        Ok(())
    } else {
        Err(refuse(
            StatusCode::FORBIDDEN,
            &format!(
                "refused: this POST came from {} but the dashboard is {host}; state changes are accepted only from the dashboard's own pages",
                from.as_deref().unwrap_or("a page that sent no Origin")
            ),
        ))
    }
}

/// The caller of a POST with form field `csrf`, after the origin and CSRF checks.
pub fn post_caller(state: &HttpState, headers: &HeaderMap, csrf: &str) -> Result<Caller, Response> {
    same_origin(headers)?;
    let Some(c) = caller(state, headers) else {
        return Err(refuse(StatusCode::UNAUTHORIZED, "not logged in (or the session expired): log in again at /login"));
    };
    let ok: bool = !c.csrf.is_empty() && c.csrf.as_bytes().ct_eq(csrf.as_bytes()).into();
    if !ok {
        return Err(refuse(StatusCode::FORBIDDEN, "refused: the form's CSRF token does not match this session; reload the page and try again"));
    }
    Ok(c)
}

pub fn refuse(code: StatusCode, message: &str) -> Response {
    let body = super::html::page("refused", None, &super::html::error_body(message));
    (code, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response()
}

/// Logs `token` in: a new session and the Set-Cookie header for it, or why not.
pub fn login(state: &HttpState, token: &str) -> Result<HeaderValue, (StatusCode, String)> {
    let Some(tokens) = &state.auth.tokens else {
        return Err((StatusCode::BAD_REQUEST, "this coordinator has no tokens configured: the dashboard is open, no login needed".into()));
    };
    let Some(identity) = tokens.lookup(token.trim()) else {
        return Err((StatusCode::UNAUTHORIZED, "this token is not one the coordinator knows: paste a viewer, submitter or admin token".into()));
    };
    if !allows(identity.role, Need::View) {
        return Err((
            StatusCode::FORBIDDEN,
            format!("the token {:?} has role {}: the dashboard needs a viewer, submitter or admin token", identity.name, identity.role.as_str()),
        ));
    }
    let id = random_hex();
    let now = Instant::now();
    {
        let mut sessions = SESSIONS.lock().unwrap();
        sessions.retain(|_, s| s.expires > now);
        if sessions.len() >= MAX_SESSIONS {
            if let Some(oldest) = sessions.iter().min_by_key(|(_, s)| s.expires).map(|(k, _)| k.clone()) {
                sessions.remove(&oldest);
            }
        }
        tracing::info!(target: "lth::audit", who = %identity.name, role = identity.role.as_str(), action = "dashboard_login", "audit");
        sessions.insert(id.clone(), Session { identity, csrf: random_hex(), expires: now + SESSION_TTL });
    }
    Ok(HeaderValue::from_str(&format!("{COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}", SESSION_TTL.as_secs())).expect("ascii cookie"))
}

/// Ends the request's session; returns the header that clears the cookie.
pub fn logout(headers: &HeaderMap) -> HeaderValue {
    if let Some(id) = cookie_value(headers, COOKIE) {
        SESSIONS.lock().unwrap().remove(id);
    }
    HeaderValue::from_static("lth_session=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn cookies_are_found_among_others() {
        let h = headers(&[("cookie", "a=1; lth_session=abc; b=2")]);
        assert_eq!(cookie_value(&h, COOKIE), Some("abc"));
        assert_eq!(cookie_value(&headers(&[]), COOKIE), None);
    }

    #[test]
    fn only_same_origin_posts_pass() {
        assert!(same_origin(&headers(&[("host", "127.0.0.1:8080"), ("origin", "http://127.0.0.1:8080")])).is_ok());
        assert!(same_origin(&headers(&[("host", "127.0.0.1:8080"), ("referer", "http://127.0.0.1:8080/sweeps/1")])).is_ok());
        assert!(same_origin(&headers(&[("host", "127.0.0.1:8080"), ("origin", "http://evil.example")])).is_err());
        assert!(same_origin(&headers(&[("host", "127.0.0.1:8080"), ("origin", "null")])).is_err());
        assert!(same_origin(&headers(&[("host", "127.0.0.1:8080")])).is_err());
    }
}
