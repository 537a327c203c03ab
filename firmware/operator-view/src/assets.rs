//! The page and its two files, compiled into the binary: no CDN, works offline.

use crate::http::Response;

const PAGE: &str = include_str!("assets/index.html");
const SCRIPT: &str = include_str!("assets/app.js");
const STYLE: &str = include_str!("assets/app.css");

pub fn page() -> Response {
    Response::new(200, "text/html; charset=utf-8", PAGE)
}

pub fn script() -> Response {
    Response::new(200, "text/javascript; charset=utf-8", SCRIPT)
}

pub fn style() -> Response {
    Response::new(200, "text/css; charset=utf-8", STYLE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_has_no_inline_script_or_remote_asset() {
        assert!(PAGE.contains(r#"<script src="/app.js""#));
        // Every <script> has a src; no handler attributes, no style attribute.
        assert_eq!(
            PAGE.matches("<script").count(),
            PAGE.matches("<script src=").count()
        );
        for bad in [
            " onclick=",
            " onload=",
            " style=",
            "http://",
            "https://",
            "javascript:",
        ] {
            assert!(!PAGE.contains(bad), "{bad}");
        }
        for bad in ["http://", "https://", "eval(", "innerHTML"] {
            assert!(!SCRIPT.contains(bad), "{bad}");
        }
        assert!(PAGE.contains("Screening aid — not a diagnosis"));
        assert!(PAGE.contains("model attention, not a lesion outline"));
    }
}
