//! keygate: an authenticating reverse proxy. Every request needs a valid API key; a valid key
//! reaches its deploy target's upstream with the credential stripped and the caller's identity
//! attached.
//!
//! # Layout
//!
//! The request path, in the order a request meets it (`src/proxy/`):
//!
//! ```text
//! server.rs      accept TCP, speak HTTP/1.1 or h2c
//! route.rs       Host + path -> target                      404 no_route
//! credential.rs  X-API-Key header, else api_key query        403 key_missing / key_invalid
//! client_ip.rs   peer -> canonical client address
//! policy.rs      SHA-256, one lookup, status, expiry         403 key_invalid / inactive / expired
//! forward.rs     strip key, set identity headers, stream     502 / 504 upstream_*
//! deny.rs        every denial -> problem+json, in one place
//! ```
//!
//! Beside it: `config/` reads `keygate.toml` (raw serde types, then validation with line and
//! column), `snapshot.rs` holds the validated config that requests read and that is swapped whole,
//! `secret.rs` hashes and generates secrets, `cli.rs` is the command line.

#![forbid(unsafe_code)]

pub mod admin;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod http;
pub mod last_used;
pub mod limits;
pub mod manage;
pub mod metrics;
pub mod proxy;
pub mod reload;
pub mod secret;
pub mod snapshot;
pub mod store;
pub mod tls;

use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;

use snapshot::Published;

/// `keygate run`: load the config, bind, serve until SIGINT or SIGTERM.
pub async fn run(config_path: &Path) -> anyhow::Result<()> {
    let shutdown = shutdown_signal();
    let (loaded, text) = load(config_path)?;
    let listen = loaded.snapshot.server.listen;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    serve(config_path, loaded, text, listener, shutdown).await
}

/// Reads and validates the config, logging its warnings; also returns the text, whose hash
/// tells the reloader what is already loaded.
pub fn load(config_path: &Path) -> anyhow::Result<(config::Loaded, Vec<u8>)> {
    let text = std::fs::read(config_path).map_err(|source| config::LoadError::Io {
        file: config_path.to_path_buf(),
        source,
    })?;
    let utf8 = std::str::from_utf8(&text)
        .with_context(|| format!("{}: the file is not UTF-8 text", config_path.display()))?;
    let loaded = config::parse(utf8, config_path)?;
    for w in &loaded.warnings {
        tracing::warn!("{w}");
    }
    tracing::info!(config = %config_path.display(), "loaded {}", loaded.snapshot.summary());
    Ok((loaded, text))
}

/// Serves `listener` with `loaded` and keeps the config reloaded from `config_path` until
/// `shutdown` completes; binds the admin API's listener from the config when it has one. What
/// `run` does after binding; tests call it with their own listener.
pub async fn serve(
    config_path: &Path,
    loaded: config::Loaded,
    text: impl AsRef<[u8]>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let admin = match &loaded.snapshot.admin {
        None => None,
        Some(a) => Some(
            tokio::net::TcpListener::bind(a.listen)
                .await
                .with_context(|| format!("cannot listen on {} for the admin API", a.listen))?,
        ),
    };
    serve_with_admin(config_path, loaded, text, listener, admin, shutdown).await
}

/// [`serve`] with the admin API on a listener of the caller's (tests bind port 0).
pub async fn serve_with_admin(
    config_path: &Path,
    loaded: config::Loaded,
    text: impl AsRef<[u8]>,
    listener: tokio::net::TcpListener,
    admin_listener: Option<tokio::net::TcpListener>,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    let configured = loaded.snapshot.server.listen;
    let certs = match &loaded.snapshot.server.tls {
        None => None,
        Some(files) => Some(Arc::new(
            tls::CertStore::load(files).map_err(anyhow::Error::msg)?,
        )),
    };
    let acceptor = match &certs {
        None => None,
        Some(store) => Some(tokio_rustls::TlsAcceptor::from(store.server_config()?)),
    };
    let state = last_used::path_for(&loaded.snapshot, config_path);
    last_used::restore(&loaded.snapshot, &state);
    let access_log = proxy::observe::AccessLog::open(&loaded.snapshot.log).with_context(|| {
        format!(
            "cannot open the access log {:?}",
            loaded.snapshot.log.access
        )
    })?;
    let metrics_listener = match loaded.snapshot.metrics_listen {
        None => None,
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} for metrics"))?,
        ),
    };
    let metrics = metrics::Metrics::new();
    let cluster = match &loaded.snapshot.cluster {
        None => None,
        Some(c) => Some(
            cluster::Cluster::new(c.clone(), metrics.clone())
                .with_context(|| format!("[cluster] redis = {:?}", c.redis))?,
        ),
    };
    let published = Arc::new(Published::new(loaded.snapshot));
    last_used::spawn(
        published.clone(),
        config_path.to_path_buf(),
        cluster.clone(),
    );
    let reloader = Arc::new(reload::Reloader::new(
        config_path.to_path_buf(),
        published.clone(),
        configured,
        text.as_ref(),
        certs,
        metrics.clone(),
    ));
    // Only that first hash needs the text: held to the end, a 1,000,000-key config (~160 MB)
    // would stay resident beside the keys parsed from it.
    drop(text);
    reload::spawn(reloader.clone()).context("cannot watch the config file")?;
    if let Some(c) = &cluster {
        tracing::info!(mode = ?c.config().mode, on_redis_error = ?c.on_error(), "rate limits and key changes shared through Redis");
        tokio::spawn(c.clone().warm());
        tokio::spawn(c.clone().run_sync());
        let r = reloader.clone();
        tokio::spawn(c.clone().listen(move || {
            let r = r.clone();
            tokio::task::spawn_blocking(move || r.reload_all(reload::Trigger::Cluster));
        }));
    }
    // `/readyz` on the admin API: true while the proxy's workers accept.
    let mut ready: Option<Arc<std::sync::atomic::AtomicBool>> = None;
    // One shutdown for both listeners, once the proxy has drained: until then `/readyz`
    // answers 503 (so a load balancer takes this instance out) and `/metrics` shows the drain.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    if let Some(admin_listener) = admin_listener {
        let admin_addr = admin_listener.local_addr()?;
        tracing::info!(addr = %admin_addr, "admin API listening");
        let admin = Arc::new(admin::Admin::new(
            published.clone(),
            reloader,
            metrics.clone(),
            cluster.clone(),
        ));
        ready = Some(admin.readiness());
        let mut stop = stop_rx.clone();
        tokio::spawn(admin::serve(admin_listener, admin, async move {
            let _ = stop.wait_for(|s| *s).await;
        }));
    }
    let scheme = if acceptor.is_some() { "https" } else { "http" };
    tracing::info!(%addr, %scheme, "keygate listening");
    if let Some(listener) = metrics_listener {
        tracing::info!(addr = %listener.local_addr()?, "metrics listening");
        let mut stop = stop_rx.clone();
        tokio::spawn(metrics::serve(
            listener,
            metrics.clone(),
            published.clone(),
            async move {
                let _ = stop.wait_for(|s| *s).await;
            },
        ));
    }
    let observer = proxy::observe::Observer {
        shard: metrics.shard(),
        metrics,
        access: access_log,
    };
    let proxy = proxy::Proxy::observed(published.clone(), observer).with_cluster(cluster);
    let workers = std::thread::available_parallelism().unwrap_or(std::num::NonZeroUsize::MIN);
    // First polled once every worker runs: ready from then until the shutdown begins.
    proxy::server::serve_workers(listener, workers, &proxy, acceptor, async move {
        let set = |v| {
            if let Some(r) = &ready {
                r.store(v, std::sync::atomic::Ordering::Relaxed);
            }
        };
        set(true);
        shutdown.await;
        set(false);
    })
    .await
    .context("cannot start the server workers")?;
    let _ = stop_tx.send(true);
    drop(stop_rx);
    let config = config_path.to_path_buf();
    tokio::task::spawn_blocking(move || last_used::flush(&published, &config)).await?;
    Ok(())
}

/// Completes on the first SIGINT or SIGTERM; a second one exits the process at once, without
/// waiting for connections in flight. The handlers are installed when this is called, not when
/// the future is first polled, so a signal sent as soon as "listening" is logged is never met
/// by the default action (death by signal instead of a clean exit).
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let mut signals = {
        use tokio::signal::unix::{SignalKind, signal};
        (
            signal(SignalKind::terminate()).ok(),
            signal(SignalKind::interrupt()).ok(),
        )
    };
    async move {
        #[cfg(unix)]
        {
            either_signal(&mut signals).await;
            tracing::info!("shutdown signal received; a second one exits at once");
            tokio::spawn(async move {
                either_signal(&mut signals).await;
                tracing::warn!("second shutdown signal: exiting without waiting for connections");
                std::process::exit(1);
            });
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            tracing::info!("shutdown signal received");
        }
    }
}

#[cfg(unix)]
type Signals = (
    Option<tokio::signal::unix::Signal>,
    Option<tokio::signal::unix::Signal>,
);

/// The next SIGTERM or SIGINT (never, for one whose handler could not be installed).
#[cfg(unix)]
async fn either_signal((term, int): &mut Signals) {
    async fn one(s: &mut Option<tokio::signal::unix::Signal>) {
        match s {
            Some(s) => {
                s.recv().await;
            }
            None => std::future::pending().await,
        }
    }
    tokio::select! {
        () = one(term) => {},
        () = one(int) => {},
    }
}
