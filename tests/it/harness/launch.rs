//! The one place the tests call keygate's launch API (`keygate::Gateway`, the proxy's own
//! server). Everything else in the harness and the tests starts keygate through these functions,
//! so a change to that API is a change here.

use std::path::Path;
use std::sync::Arc;

use keygate::Gateway;
use tokio::net::TcpListener;

/// Reads and checks a config file (and the keys file it names) as `keygate run` does.
pub fn load(path: &Path) -> anyhow::Result<Gateway> {
    Gateway::load(path)
}

/// Serves a loaded config file as `keygate run` does after binding, with the real reloader (file
/// watcher, SIGHUP, periodic check), until the runtime ends: the proxy on `proxy`, the admin API
/// on `admin` when given, else where the config's `[admin]` says (if anywhere).
pub async fn serve(
    gateway: Gateway,
    proxy: TcpListener,
    admin: Option<TcpListener>,
) -> anyhow::Result<()> {
    let listeners = gateway.bind(Some(proxy), admin).await?;
    gateway.run(listeners, std::future::pending()).await
}

/// Serves config text with the proxy's own server on `listener`, in the background: no file,
/// so no reloader and no admin API. Plain HTTP (no TLS acceptor): HTTP/1.1 and h2c on one port.
pub fn spawn_proxy(config: &str, listener: TcpListener) {
    let loaded = match keygate::config::parse(config, Path::new("test.toml")) {
        Ok(l) => l,
        Err(e) => panic!("test config is invalid: {e}\n---\n{config}"),
    };
    let published = Arc::new(keygate::state::Published::new(loaded.snapshot));
    let proxy = Arc::new(keygate::proxy::Proxy::new(published));
    tokio::spawn(keygate::proxy::server::serve(
        listener,
        proxy,
        None,
        std::future::pending(),
    ));
}
