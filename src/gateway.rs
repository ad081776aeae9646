//! The gateway as one value: built from a config file, run on listeners until a shutdown signal.
//!
//! [`Gateway::load`] reads and validates the config; [`Gateway::bind`] binds the listeners the
//! config names (tests hand in their own, bound to port 0); [`Gateway::run`] wires the parts
//! together (published snapshot, reloader, cluster, admin API, metrics, access log, the proxy's
//! workers), serves until `shutdown` completes, drains, and writes the last-used times once more.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use tokio::net::TcpListener;

use crate::snapshot::Snapshot;
use crate::state::{Published, last_used, quotas_file};
use crate::{admin, cluster, config, events, metrics, proxy, reload, tls};

/// `keygate run`: load the config, bind, serve until SIGINT or SIGTERM.
pub async fn run(config_path: &Path) -> anyhow::Result<()> {
    let shutdown = shutdown_signal();
    let gateway = Gateway::load(config_path)?;
    let listeners = gateway.bind(None, None).await?;
    gateway.run(listeners, shutdown).await
}

/// A validated config, ready to serve.
pub struct Gateway {
    config_path: PathBuf,
    loaded: config::Loaded,
    /// The SHA-256 of the config text as loaded: it tells the reloader what is already served.
    /// (The text itself is gone once loaded: a 1,000,000-key config is ~160 MB.)
    main_digest: [u8; 32],
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("config", &self.config_path)
            .finish_non_exhaustive()
    }
}

/// Where the gateway listens: the proxy, and the admin API and metrics when the config has them.
pub struct Listeners {
    pub proxy: TcpListener,
    pub admin: Option<TcpListener>,
    pub metrics: Option<TcpListener>,
    /// `[verify]`: forward-auth calls.
    pub verify: Option<TcpListener>,
}

impl Gateway {
    /// Reads and validates the config at `path` (and the keys file it names), logging its
    /// warnings.
    pub fn load(path: &Path) -> anyhow::Result<Gateway> {
        let text = config::read_text(path)?;
        // Hashed on a second thread while this one parses: on a large config each takes a
        // while, and nothing else runs yet.
        let (main_digest, loaded) = std::thread::scope(|s| {
            let digest = s.spawn(|| reload::file_digest(text.as_bytes()));
            let loaded = config::parse(&text, path);
            let main_digest = digest
                .join()
                .unwrap_or_else(|_| reload::file_digest(text.as_bytes()));
            (main_digest, loaded)
        });
        drop(text);
        let loaded = loaded?;
        for w in &loaded.warnings {
            tracing::warn!("{w}");
        }
        tracing::info!(config = %path.display(), "loaded {}", loaded.snapshot.summary());
        Ok(Gateway {
            config_path: path.to_path_buf(),
            loaded,
            main_digest,
        })
    }

    pub fn snapshot(&self) -> &Snapshot {
        &self.loaded.snapshot
    }

    /// The config before it is served: tests switch the access log off here.
    pub fn snapshot_mut(&mut self) -> &mut Snapshot {
        &mut self.loaded.snapshot
    }

    /// Binds what the config names, except the listeners given (tests bind port 0 themselves).
    pub async fn bind(
        &self,
        proxy: Option<TcpListener>,
        admin: Option<TcpListener>,
    ) -> anyhow::Result<Listeners> {
        let snap = &self.loaded.snapshot;
        let proxy = match proxy {
            Some(l) => l,
            None => bind(snap.server.listen, "").await?,
        };
        let admin = match (admin, &snap.admin) {
            (Some(l), _) => Some(l),
            (None, Some(a)) => Some(bind(a.listen, " for the admin API").await?),
            (None, None) => None,
        };
        let metrics = match snap.metrics_listen {
            Some(addr) => Some(bind(addr, " for metrics").await?),
            None => None,
        };
        let verify = match &snap.verify {
            Some(v) => Some(bind(v.listen, " for verify calls").await?),
            None => None,
        };
        Ok(Listeners {
            proxy,
            admin,
            metrics,
            verify,
        })
    }

    /// Serves on `listeners`, keeping the config reloaded, until `shutdown` completes; then
    /// stops accepting, lets requests in flight finish (up to `shutdown_timeout`), and returns.
    pub async fn run(
        self,
        listeners: Listeners,
        shutdown: impl Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let Gateway {
            config_path,
            loaded,
            main_digest,
        } = self;
        let keys_digest = loaded.keys_digest;
        let snap = loaded.snapshot;
        let addr = listeners.proxy.local_addr()?;
        let configured = snap.server.listen;
        let certs = match &snap.server.tls {
            None => None,
            Some(files) => Some(Arc::new(
                tls::CertStore::load(files).map_err(anyhow::Error::msg)?,
            )),
        };
        let acceptor = match &certs {
            None => None,
            Some(store) => Some(tokio_rustls::TlsAcceptor::from(store.server_config()?)),
        };
        let state = last_used::path_for(&snap, &config_path);
        let access_log = proxy::observe::AccessLog::open(&snap.log)
            .with_context(|| format!("cannot open the access log {:?}", snap.log.access))?;
        let metrics = metrics::Metrics::new();
        let cluster = match &snap.cluster {
            None => None,
            Some(c) => Some(
                cluster::Cluster::new(c.clone(), metrics.clone())
                    .with_context(|| format!("[cluster] redis = {:?}", c.redis))?,
            ),
        };
        let spool = events::deliver::spool_path(&snap, &config_path);
        let (events, event_rx) = events::Events::new(&snap.webhooks, metrics.clone());
        let usage = snap.usage.enabled.then(|| {
            let u = crate::usage::Usage::new(
                snap.usage.clone(),
                crate::usage::store::path_for(&snap, &config_path),
                cluster.clone(),
            );
            u.spawn();
            u
        });
        let published = Arc::new(Published::new(snap));
        // Always running, so a reload that adds the first webhook needs no restart.
        let delivery = tokio::spawn(events::deliver::run(
            event_rx,
            published.clone(),
            metrics.clone(),
            cluster.clone(),
            spool,
        ));
        tokio::spawn(async move {
            if let Err(e) = delivery.await
                && e.is_panic()
            {
                tracing::error!(
                    "the webhook delivery task failed; events are no longer sent until a restart (pending ones are in the spool): {e}"
                );
            }
        });
        last_used::restore(&published.load(), &state);
        last_used::spawn(published.clone(), config_path.clone(), cluster.clone());
        quotas_file::restore(
            published.quotas(),
            &quotas_file::path_for(&published.load(), &config_path),
        );
        quotas_file::spawn(published.clone(), config_path.clone());
        let admin_certs = match snap_admin_tls(&published) {
            None => None,
            Some(files) => Some(Arc::new(
                tls::CertStore::load(&files).map_err(|e| anyhow::anyhow!("[admin.tls]: {e}"))?,
            )),
        };
        let reloader = Arc::new(
            reload::Reloader::new(
                config_path.clone(),
                published.clone(),
                configured,
                (main_digest, keys_digest),
                certs,
                metrics.clone(),
            )
            .with_admin_certs(admin_certs.clone())
            .with_events(events.clone()),
        );
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
        let mut ready: Option<Arc<AtomicBool>> = None;
        // One shutdown for the admin and metrics listeners, once the proxy has drained: until
        // then `/readyz` answers 503 (so a load balancer takes this instance out) and
        // `/metrics` shows the drain.
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let stopped = |mut stop: tokio::sync::watch::Receiver<bool>| async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        if let Some(listener) = listeners.admin {
            tracing::info!(addr = %listener.local_addr()?, "admin API listening");
            let admin_tls = match &admin_certs {
                None => None,
                Some(store) => Some(tokio_rustls::TlsAcceptor::from(store.server_config()?)),
            };
            let admin = Arc::new(
                admin::Admin::new(
                    published.clone(),
                    reloader,
                    metrics.clone(),
                    cluster.clone(),
                )
                .with_https(admin_tls.is_some())
                .with_usage(usage.clone()),
            );
            ready = Some(admin.readiness());
            tokio::spawn(admin.clone().keep_default_keys());
            tokio::spawn(admin::serve(
                listener,
                admin,
                admin_tls,
                stopped(stop_rx.clone()),
            ));
        }
        let scheme = if acceptor.is_some() { "https" } else { "http" };
        tracing::info!(%addr, %scheme, "keygate listening");
        if let Some(listener) = listeners.metrics {
            tracing::info!(addr = %listener.local_addr()?, "metrics listening");
            tokio::spawn(metrics::serve(
                listener,
                metrics.clone(),
                published.clone(),
                stopped(stop_rx.clone()),
            ));
        }
        let observer = proxy::observe::Observer {
            shard: metrics.shard(),
            metrics,
            access: access_log,
            events: Some(events.clone()),
            usage: usage.as_ref().map(|u| u.meter()),
        };
        let proxy = proxy::Proxy::observed(published.clone(), observer).with_cluster(cluster);
        let workers = std::thread::available_parallelism().unwrap_or(std::num::NonZeroUsize::MIN);
        // First polled once every worker runs: ready from then until the shutdown begins.
        let set_ready = move |v| {
            if let Some(r) = &ready {
                r.store(v, Ordering::Relaxed);
            }
        };
        // One shutdown for both request listeners.
        let (down_tx, down_rx) = tokio::sync::watch::channel(false);
        let verify = async {
            let Some(listener) = listeners.verify else {
                return Ok(());
            };
            tracing::info!(addr = %listener.local_addr()?, "verify listening");
            proxy::server::serve_verify_workers(listener, workers, &proxy, stopped(down_rx)).await
        };
        let serve =
            proxy::server::serve_workers(listeners.proxy, workers, &proxy, acceptor, async move {
                set_ready(true);
                shutdown.await;
                set_ready(false);
                let _ = down_tx.send(true);
            });
        let (served, verified) = tokio::join!(serve, verify);
        served.context("cannot start the server workers")?;
        verified.context("cannot start the verify listener's workers")?;
        let _ = stop_tx.send(true);
        drop(stop_rx);
        events.flush(std::time::Duration::from_secs(2)).await;
        if let Some(u) = &usage {
            u.flush().await;
        }
        tokio::task::spawn_blocking(move || {
            last_used::flush(&published, &config_path);
            quotas_file::flush(&published, &config_path);
        })
        .await?;
        Ok(())
    }
}

async fn bind(addr: std::net::SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}{what}"))
}

/// Completes on the first SIGINT or SIGTERM; a second one exits the process at once, without
/// waiting for connections in flight. The handlers are installed when this is called, not when
/// the future is first polled, so a signal sent as soon as "listening" is logged is never met
/// by the default action (death by signal instead of a clean exit).
fn shutdown_signal() -> impl Future<Output = ()> {
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

/// `[admin.tls]`, when the admin API serves HTTPS.
fn snap_admin_tls(published: &Published) -> Option<crate::model::TlsFiles> {
    published.load().admin.as_ref().and_then(|a| a.tls.clone())
}
