//! A function module's route table: method, path template, handler. The plumbing every
//! route needs (the Authorization header, the query, a bounded body, JSON errors) is here
//! once, so a module lists its routes and writes plain async functions.
//!
//! ```ignore
//! pub const ROUTES: &[Route] = &[
//!     route!(GET "/api/v1/entra-id/users" => list),
//!     route!(GET "/api/v1/entra-id/users/{user_id}" => show),
//! ];
//! ```

use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use warp::filters::BoxedFilter;
use warp::http::{HeaderMap, Method};
use warp::reply::Response;
use warp::{Filter, Rejection};

use super::{ApiError, answer, parse_json};
use crate::app::App;

/// What a handler receives.
pub struct Request {
    /// Path parameters by name, percent-decoded.
    pub params: Vec<(&'static str, String)>,
    /// The raw query string (without `?`).
    pub query: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Request {
    /// A path parameter (present whenever the route matched, except optional ones).
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The Authorization header.
    pub fn authorization(&self) -> Option<&str> {
        self.headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
    }

    /// The query's parameters, decoded; a malformed query is a 400.
    pub fn query_pairs(&self) -> Vec<(String, String)> {
        url::form_urlencoded::parse(self.query.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect()
    }

    /// One query parameter; given twice is a 400.
    pub fn query_param(&self, name: &str) -> Result<Option<String>, ApiError> {
        let mut values = self
            .query_pairs()
            .into_iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v);
        let first = values.next();
        if values.next().is_some() {
            return Err(ApiError::bad_request(format!("{name} is given twice")));
        }
        Ok(first)
    }

    /// The body as JSON of type `T` (400 with the reason otherwise).
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, ApiError> {
        parse_json(&self.body)
    }
}

/// A handler: an async function of the app and the request.
pub type Handler = for<'a> fn(&'a App, &'a Request) -> BoxFuture<'a, Result<Response, ApiError>>;

/// One route.
pub struct Route {
    pub method: Method,
    /// `/api/...` with `{name}` segments, and at most one trailing `{name?}`.
    pub path: &'static str,
    pub handler: Handler,
    /// Largest body accepted.
    pub max_body: usize,
}

/// A [`Route`] from `METHOD "path" => handler` (an `async fn(&App, &Request)`).
#[macro_export]
macro_rules! route {
    ($method:ident $path:literal => $handler:path) => {
        $crate::routes::router::Route {
            method: ::warp::http::Method::$method,
            path: $path,
            handler: |app, request| ::std::boxed::Box::pin($handler(app, request)),
            max_body: $crate::routes::MAX_JSON_BODY,
        }
    };
}

/// A path this table serves, with a method it does not.
#[derive(Debug)]
pub struct WrongMethod;

impl warp::reject::Reject for WrongMethod {}

/// Matches `path` against a template; the captured parameters on success.
fn matches(template: &'static str, path: &str) -> Option<Vec<(&'static str, String)>> {
    let mut params = Vec::new();
    let mut parts = path.trim_start_matches('/').split('/');
    for segment in template.trim_start_matches('/').split('/') {
        let part = parts.next();
        if let Some(name) = segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            match (name.strip_suffix('?'), part) {
                (Some(_), None) => {}
                (_, None) | (_, Some("")) => return None,
                (optional, Some(raw)) => {
                    let value = percent_encoding::percent_decode_str(raw)
                        .decode_utf8()
                        .ok()?
                        .into_owned();
                    params.push((optional.unwrap_or(name), value));
                }
            }
        } else if part != Some(segment) {
            return None;
        }
    }
    parts.next().is_none().then_some(params)
}

/// The filter that serves `routes`; requests matching none are left to other filters.
pub fn serve(app: Arc<App>, routes: &'static [Route]) -> BoxedFilter<(Response,)> {
    let find = warp::method()
        .and(warp::path::full())
        .and_then(
            move |method: Method, path: warp::path::FullPath| async move {
                let mut path_known = false;
                for route in routes {
                    if let Some(params) = matches(route.path, path.as_str()) {
                        if route.method == method {
                            return Ok((route, params));
                        }
                        path_known = true;
                    }
                }
                // another table may still serve the method; if none does, this is a 405
                Err::<_, Rejection>(if path_known {
                    warp::reject::custom(WrongMethod)
                } else {
                    warp::reject::not_found()
                })
            },
        )
        .untuple_one();
    find.and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .and(warp::header::headers_cloned())
        .and(warp::header::optional::<u64>("content-length"))
        .and(warp::body::stream())
        .then(
            move |route: &'static Route,
                  params,
                  query: String,
                  headers: HeaderMap,
                  length: Option<u64>,
                  stream| {
                let app = app.clone();
                async move {
                    let body = match super::collect_body(length, stream, route.max_body).await {
                        Ok(b) => b,
                        Err(e) => return e.into_response(),
                    };
                    let request = Request {
                        params,
                        query,
                        headers,
                        body,
                    };
                    answer((route.handler)(&app, &request).await)
                }
            },
        )
        .boxed()
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn templates_capture_and_decode_segments() {
        assert_eq!(
            matches("/api/v1/users/{id}", "/api/v1/users/a%20b"),
            Some(vec![("id", "a b".to_string())])
        );
        assert_eq!(matches("/api/v1/users/{id}", "/api/v1/users"), None);
        assert_eq!(matches("/api/v1/users/{id}", "/api/v1/users/"), None);
        assert_eq!(matches("/api/v1/users/{id}", "/api/v1/users/1/x"), None);
        assert_eq!(
            matches("/api/v1/users/{id?}", "/api/v1/users"),
            Some(vec![])
        );
        assert_eq!(
            matches("/api/v1/users/{id?}", "/api/v1/users/7"),
            Some(vec![("id", "7".to_string())])
        );
        assert_eq!(matches("/api/v1/users", "/api/v1/groups"), None);
    }
}
