//! The key console's files: plain HTML, CSS and JavaScript in `src/admin/console/`, embedded
//! in the binary at build time (nothing is fetched at run time; it works offline). The page is
//! a client of the admin API and nothing else: it reads and changes keys only through `/v1/`.
//!
//! `KEYGATE_CONSOLE_DIR` serves the files from that directory instead, read on each request,
//! so the page can be edited without rebuilding; it is for developing the console only.

use std::borrow::Cow;

/// Sent with every admin answer: the page runs only its own script and style files (no inline
/// script or style, no eval), talks only to its own origin, and may not be framed.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; form-action 'self'; base-uri 'none'; \
     frame-ancestors 'none'";

/// (path, file name, content type) of each file.
const FILES: [(&str, &str, &str); 4] = [
    ("/", "index.html", "text/html; charset=utf-8"),
    (
        "/console/app.js",
        "app.js",
        "text/javascript; charset=utf-8",
    ),
    ("/console/app.css", "app.css", "text/css; charset=utf-8"),
    ("/console/favicon.svg", "favicon.svg", "image/svg+xml"),
];

fn embedded(name: &str) -> &'static [u8] {
    match name {
        "index.html" => include_bytes!("console/index.html"),
        "app.js" => include_bytes!("console/app.js"),
        "app.css" => include_bytes!("console/app.css"),
        _ => include_bytes!("console/favicon.svg"),
    }
}

/// The file served at `path` and its content type, if any.
pub fn file(path: &str) -> Option<(Cow<'static, [u8]>, &'static str)> {
    let (_, name, content_type) = FILES.iter().find(|(p, _, _)| *p == path)?;
    if let Some(dir) = std::env::var_os("KEYGATE_CONSOLE_DIR") {
        match std::fs::read(std::path::Path::new(&dir).join(name)) {
            Ok(bytes) => return Some((Cow::Owned(bytes), content_type)),
            Err(e) => tracing::warn!(error = %e, file = name, "KEYGATE_CONSOLE_DIR: cannot read"),
        }
    }
    Some((Cow::Borrowed(embedded(name)), content_type))
}
