//! The one place the tests call keygate's launch API (`keygate::load`, `keygate::serve`,
//! `keygate::serve_with_admin`, the proxy's own server). Everything else in the harness and the
//! tests starts keygate through these functions, so a change to that API is a change here.

use std::path::Path;
use std::sync::Arc;

use tokio::net::TcpListener;

/// Reads and checks a config file (and the keys file it names) as `keygate run` does.
pub fn load(path: &Path) -> anyhow::Result<(keygate::config::Loaded, Vec<u8>)> {
    keygate::load(path)
}

/// Serves a loaded config file as `keygate run` does after binding, with the real reloader (file
/// watcher, SIGHUP, periodic check), until the runtime ends: the proxy on `proxy`, the admin API
/// on `admin` when given, else where the config's `[admin]` says (if anywhere).
pub async fn serve(
    path: &Path,
    loaded: keygate::config::Loaded,
    text: &[u8],
    proxy: TcpListener,
    admin: Option<TcpListener>,
) -> anyhow::Result<()> {
    let shutdown = std::future::pending();
    match admin {
        Some(admin) => {
            keygate::serve_with_admin(path, loaded, text, proxy, Some(admin), shutdown).await
        }
        None => keygate::serve(path, loaded, text, proxy, shutdown).await,
    }
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
