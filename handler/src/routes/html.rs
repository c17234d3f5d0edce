//! The small HTML pages an administrator's browser sees during onboarding. Every value is
//! escaped; pages never cache.

use warp::Reply as _;
use warp::http::{HeaderValue, StatusCode};
use warp::reply::Response;

/// Escapes text for HTML content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// A page with a title and paragraphs (plain text, escaped here).
pub fn page(status: StatusCode, title: &str, paragraphs: &[String]) -> Response {
    document(status, title, &paragraphs_html(paragraphs))
}

/// A page with paragraphs and a form that posts `fields` (hidden) to `action` on a click.
pub fn form(
    title: &str,
    paragraphs: &[String],
    action: &str,
    fields: &[(&str, &str)],
    button: &str,
) -> Response {
    let hidden: String = fields
        .iter()
        .map(|(name, value)| {
            format!(
                "<input type=\"hidden\" name=\"{}\" value=\"{}\">",
                escape(name),
                escape(value)
            )
        })
        .collect();
    let body = format!(
        "{}<form method=\"post\" action=\"{}\">{hidden}<button type=\"submit\">{}</button></form>\n",
        paragraphs_html(paragraphs),
        escape(action),
        escape(button),
    );
    document(StatusCode::OK, title, &body)
}

fn paragraphs_html(paragraphs: &[String]) -> String {
    paragraphs
        .iter()
        .map(|p| format!("<p>{}</p>\n", escape(p)))
        .collect()
}

fn document(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\">\
         <title>{title}</title><style>body{{font-family:system-ui,sans-serif;max-width:40em;margin:4em auto;padding:0 1em;line-height:1.5}}</style>\
         </head><body><h1>{title}</h1>\n{body}</body></html>\n",
        title = escape(title),
    );
    let mut response = warp::reply::with_status(warp::reply::html(html), status).into_response();
    let headers = response.headers_mut();
    headers.insert("cache-control", HeaderValue::from_static("no-store"));
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    // forms may only post back here; nothing loads from anywhere
    headers.insert(
        "content-security-policy",
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'",
        ),
    );
    headers.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_in_values_is_escaped() {
        assert_eq!(
            escape("<script>alert('x')</script> & \"q\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"
        );
    }
}
