//! A TCP relay between the services and a database server, which a test can cut: as seen from
//! the services, cutting it is the server stopping (open connections are dropped, new ones are
//! refused), without stopping the server other tests share.

use std::net::SocketAddr;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub struct Cuttable {
    pub port: u16,
    cut: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Cuttable {
    /// Relays loopback connections on a port of its own to `target`.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("address").port();
        let cut = CancellationToken::new();
        let stop = cut.clone();
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                let accepted = tokio::select! {
                    () = stop.cancelled() => break,
                    accepted = listener.accept() => accepted,
                };
                let Ok((mut client, _)) = accepted else { continue };
                connections.spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
            // Dropping the listener refuses new connections; aborting the relays drops the open ones.
            connections.shutdown().await;
        });
        Self { port, cut, task }
    }

    /// `url` (a `postgres://` URL) with its host and port replaced by this relay's.
    pub fn url_through(&self, url: &str) -> String {
        let (scheme, rest) = url.split_once("://").expect("a URL");
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let userinfo = authority
            .rsplit_once('@')
            .map(|(user, _)| format!("{user}@"))
            .unwrap_or_default();
        format!("{scheme}://{userinfo}127.0.0.1:{}/{path}", self.port)
    }

    /// The database is now "stopped".
    pub async fn cut(self) {
        self.cut.cancel();
        let _ = self.task.await;
    }
}

/// The host and port of a `postgres://` URL.
pub fn server_address(url: &str) -> SocketAddr {
    let rest = url.split_once("://").expect("a URL").1;
    let authority = rest.split('/').next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map(|(_, hp)| hp).unwrap_or(authority);
    let host_port = if host_port.contains(':') {
        host_port.to_owned()
    } else {
        format!("{host_port}:5432")
    };
    use std::net::ToSocketAddrs;
    host_port
        .to_socket_addrs()
        .expect("resolvable database host")
        .next()
        .expect("an address")
}
