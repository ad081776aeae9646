//! `[log]`: the access log.

use std::path::Path;

use crate::config::diagnostics::Checker;
use crate::config::raw::RawLog;
use crate::config::values::relative_to;
use crate::model::{AccessTo, Log, LogFormat};

/// `[log]`: the access log's destination and format.
pub fn log(c: &mut Checker<'_>, raw: Option<&RawLog>, config: &Path) -> Log {
    const S: &str = "[log]";
    let Some(raw) = raw else {
        return Log::default();
    };
    let access = match &raw.access {
        None => AccessTo::default(),
        Some(a) => match a.get_ref().as_str() {
            "stdout" => AccessTo::Stdout,
            "off" => AccessTo::Off,
            "" => {
                c.error(
                    a.span(),
                    S,
                    "access: expected \"stdout\", \"off\" or a file path",
                );
                AccessTo::default()
            }
            path => AccessTo::File(relative_to(config, path)),
        },
    };
    let format = match raw.format.as_ref().map(|f| (f, f.get_ref().as_str())) {
        None | Some((_, "json")) => LogFormat::Json,
        Some((_, "text")) => LogFormat::Text,
        Some((f, other)) => {
            c.error(
                f.span(),
                S,
                format!("format: {other:?} is not \"json\" or \"text\""),
            );
            LogFormat::Json
        }
    };
    Log { access, format }
}
