//! `[[webhooks]]`: the receivers of key and quota events (docs/webhooks.md).

use std::collections::HashMap;
use std::time::Duration;

use http::uri::{Scheme, Uri};
use toml::Spanned;

use crate::config::defaults::{
    DEFAULT_WEBHOOK_MAX_PENDING, DEFAULT_WEBHOOK_RETRY_FOR, DEFAULT_WEBHOOK_RETRY_INITIAL,
    DEFAULT_WEBHOOK_TIMEOUT,
};
use crate::config::diagnostics::{Checker, Subject};
use crate::config::raw::RawWebhook;
use crate::config::values::relative_to;
use crate::model::{EVENT_NAMES, Webhook};

/// The longest `retry_for`: the spool holds what is pending, it is not an archive.
const MAX_RETRY_FOR: Duration = Duration::from_secs(7 * 24 * 3600);

/// Every `[[webhooks]]` table; one that is wrong is reported and left out.
pub fn webhooks(c: &mut Checker<'_>, raw: &[Spanned<RawWebhook>]) -> Vec<Webhook> {
    let mut out = Vec::new();
    let mut names: HashMap<String, usize> = HashMap::new();
    for (i, table) in raw.iter().enumerate() {
        let w = table.get_ref();
        let label = w
            .name
            .as_ref()
            .map_or_else(|| default_name(w.url.get_ref()), |n| n.get_ref().to_owned());
        let subject = Subject::item("webhook", &label);
        let mut ok = true;
        let url = match w.url.get_ref().parse::<Uri>() {
            Ok(u)
                if (u.scheme() == Some(&Scheme::HTTP) || u.scheme() == Some(&Scheme::HTTPS))
                    && u.host().is_some_and(|h| !h.is_empty()) =>
            {
                Some(u)
            }
            _ => {
                c.error(
                    w.url.span(),
                    subject,
                    format!(
                        "url: {:?} is not an http:// or https:// URL",
                        w.url.get_ref()
                    ),
                );
                None
            }
        };
        if let Some(n) = &w.name
            && (n.get_ref().is_empty()
                || n.get_ref().len() > 64
                || n.get_ref().chars().any(|ch| ch.is_control()))
        {
            c.error(n.span(), subject, "name: 1 to 64 printable characters");
            ok = false;
        }
        let events = w.events.get_ref();
        if events.is_empty() {
            c.error(
                w.events.span(),
                subject,
                format!("events: name at least one of {}", EVENT_NAMES.join(", ")),
            );
            ok = false;
        }
        for e in events {
            if !EVENT_NAMES.contains(&e.get_ref().as_str()) {
                c.error(
                    e.span(),
                    subject,
                    format!(
                        "events: unknown event {:?}; known: {}",
                        e.get_ref(),
                        EVENT_NAMES.join(", ")
                    ),
                );
                ok = false;
            }
        }
        let secret = match (&w.secret, &w.secret_file) {
            (Some(s), None) if !s.get_ref().is_empty() => Some(s.get_ref().as_bytes().into()),
            (Some(s), None) => {
                c.error(s.span(), subject, "secret: must not be empty");
                None
            }
            (None, Some(f)) => {
                let path = relative_to(c.main_file(), f.get_ref());
                match std::fs::read(&path) {
                    // A file written by `echo` ends with a newline that is not part of the secret.
                    Ok(bytes) => {
                        let text = bytes.trim_ascii_end();
                        if text.is_empty() {
                            c.error(
                                f.span(),
                                subject,
                                format!("secret_file: {} is empty", path.display()),
                            );
                            None
                        } else {
                            Some(text.into())
                        }
                    }
                    Err(e) => {
                        c.error(
                            f.span(),
                            subject,
                            format!("secret_file: cannot read {}: {e}", path.display()),
                        );
                        None
                    }
                }
            }
            (Some(_), Some(f)) => {
                c.error(
                    f.span(),
                    subject,
                    "give one of `secret` and `secret_file`, not both",
                );
                None
            }
            (None, None) => {
                c.error(
                    table.span(),
                    subject,
                    "needs `secret = \"…\"` or `secret_file = \"…\"`: events are signed",
                );
                None
            }
        };
        let timeout = c
            .duration(w.timeout.as_ref(), subject, "timeout")
            .unwrap_or(DEFAULT_WEBHOOK_TIMEOUT);
        let retry_initial = c
            .duration(w.retry_initial.as_ref(), subject, "retry_initial")
            .unwrap_or(DEFAULT_WEBHOOK_RETRY_INITIAL);
        let retry_for = c
            .duration(w.retry_for.as_ref(), subject, "retry_for")
            .unwrap_or(DEFAULT_WEBHOOK_RETRY_FOR);
        if let Some(r) = &w.retry_for
            && retry_for > MAX_RETRY_FOR
        {
            c.error(r.span(), subject, "retry_for: at most 7 days");
            ok = false;
        }
        let max_pending = match &w.max_pending {
            None => DEFAULT_WEBHOOK_MAX_PENDING,
            Some(m) if (1..=1_000_000).contains(m.get_ref()) => *m.get_ref(),
            Some(m) => {
                c.error(m.span(), subject, "max_pending: 1 to 1000000");
                ok = false;
                DEFAULT_WEBHOOK_MAX_PENDING
            }
        };
        if let Some(first) = names.insert(label.clone(), i) {
            c.error(
                w.name.as_ref().map_or(w.url.span(), Spanned::span),
                subject,
                format!(
                    "the same name as webhook number {} (give each its own `name`)",
                    first + 1
                ),
            );
            ok = false;
        }
        if let (true, Some(url), Some(secret)) = (ok, url, secret) {
            let mut events: Vec<Box<str>> =
                events.iter().map(|e| e.get_ref().as_str().into()).collect();
            events.sort();
            events.dedup();
            out.push(Webhook {
                name: label.into(),
                url,
                events,
                secret,
                timeout,
                retry_initial,
                retry_for,
                max_pending,
            });
        }
    }
    out
}

/// `host:port/path` of the URL: readable in a metric, and never its query or user info, which
/// may hold a token.
fn default_name(url: &str) -> String {
    match url.parse::<Uri>() {
        Ok(u) => {
            let host = u.host().unwrap_or_default();
            let port = u.port_u16().map(|p| format!(":{p}")).unwrap_or_default();
            format!("{host}{port}{}", u.path())
        }
        Err(_) => url.chars().take(64).collect(),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::{LoadError, Severity, parse};

    const TARGET: &str =
        "[[targets]]\nname = \"production\"\nupstream = \"http://127.0.0.1:3000\"\n";

    fn errors(src: &str) -> Vec<String> {
        match parse(&format!("{TARGET}{src}"), Path::new("k.toml")) {
            Ok(_) => panic!("config was accepted:\n{src}"),
            Err(LoadError::Invalid(e)) => e
                .iter()
                .filter(|p| p.severity == Severity::Error)
                .map(ToString::to_string)
                .collect(),
            Err(e) => panic!("unexpected error {e}"),
        }
    }

    #[test]
    fn events_webhooks_are_read_with_defaults() {
        let loaded = parse(
            &format!(
                "{TARGET}[[webhooks]]\nurl = \"https://hooks.example.com/keygate?token=x\"\nevents = [\"key.created\", \"quota.exceeded\", \"key.created\"]\nsecret = \"whsec\"\n"
            ),
            Path::new("k.toml"),
        )
        .unwrap();
        let w = &loaded.snapshot.webhooks[0];
        assert_eq!(&*w.name, "hooks.example.com/keygate");
        assert_eq!(
            &*w.events,
            [Box::from("key.created"), "quota.exceeded".into()]
        );
        assert_eq!(&*w.secret, b"whsec");
        assert_eq!(w.retry_for, std::time::Duration::from_secs(86_400));
        assert!(!format!("{w:?}").contains("whsec"));
    }

    #[test]
    fn events_webhook_errors_name_file_line_and_key() {
        let e = errors(
            "[[webhooks]]\nurl = \"ftp://x\"\nevents = [\"key.made\"]\nsecret = \"s\"\nsecret_file = \"f\"\ntimeout = \"soon\"\nmax_pending = 0\n",
        );
        assert_eq!(
            e,
            [
                "k.toml:5:7: webhook \"x/\": url: \"ftp://x\" is not an http:// or https:// URL",
                "k.toml:6:11: webhook \"x/\": events: unknown event \"key.made\"; known: key.created, key.updated, key.revoked, key.expiring, key.expired_used, quota.warning, quota.exceeded",
                "k.toml:8:15: webhook \"x/\": give one of `secret` and `secret_file`, not both",
                "k.toml:9:11: webhook \"x/\": timeout: \"soon\" is not a duration such as \"30s\" or \"500ms\"",
                "k.toml:10:15: webhook \"x/\": max_pending: 1 to 1000000",
            ]
        );
        let e = errors("[[webhooks]]\nurl = \"http://h/\"\nevents = []\nfoo = 1\n");
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].starts_with("k.toml:7:1: unknown field `foo`"), "{e:?}");
        let e = errors("[[webhooks]]\nurl = \"http://h/\"\nevents = []\n");
        assert_eq!(
            e,
            [
                "k.toml:4:1: webhook \"h/\": needs `secret = \"…\"` or `secret_file = \"…\"`: events are signed",
                "k.toml:6:10: webhook \"h/\": events: name at least one of key.created, key.updated, key.revoked, key.expiring, key.expired_used, quota.warning, quota.exceeded",
            ]
        );
        let e = errors(
            "[[webhooks]]\nurl = \"http://h/\"\nevents = [\"key.created\"]\nsecret = \"a\"\n[[webhooks]]\nurl = \"http://h/\"\nevents = [\"key.created\"]\nsecret_file = \"/nonexistent/secret\"\n",
        );
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(
            e[1].starts_with(
                "k.toml:11:15: webhook \"h/\": secret_file: cannot read /nonexistent/secret"
            ),
            "{e:?}"
        );
        assert!(
            e[0].starts_with("k.toml:9:7: webhook \"h/\": the same name as webhook number 1"),
            "{e:?}"
        );
    }
}
