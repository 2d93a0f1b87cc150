//! TCP relays between the services and a server they use:
//! - [`Cuttable`], in front of a database server, which a test can cut: as seen from the services,
//!   cutting it is the server stopping (open connections are dropped, new ones are refused),
//!   without stopping the server other tests share;
//! - [`Delayed`], in front of the emulator or a database server, which adds a fixed delay each
//!   way: the round trips of a cloud region, on loopback.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
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

/// One way to SQS or SNS in one AWS region, as [`Delayed`] adds it in front of the emulator
/// (their requests take 10-20 ms there).
pub const REGION_BUS: Duration = Duration::from_millis(8);
/// One way to RDS in the same region (a round trip of about a millisecond).
pub const REGION_DATABASE: Duration = Duration::from_micros(500);

/// A TCP relay that adds a fixed one-way delay in each direction: every chunk it reads is written
/// on `delay` after it was read, in order, so a request and its answer each take `delay` longer
/// (the round trip `2 x delay`) while a stream of chunks still flows at the full rate (the
/// delay is latency, not a cap on throughput). With no delay it is a plain relay, which the
/// benchmark puts in front of "near" runs so that its own cost cancels against "far" ones.
///
/// Plain threads and blocking sockets rather than tasks: tokio's timer wheel ticks in whole
/// milliseconds, which would turn half a millisecond (a round trip to a database in the same
/// zone) into one or two; a thread's sleep keeps to a few tens of microseconds.
pub struct Delayed {
    pub port: u16,
    pub delay: Duration,
    stop: Arc<AtomicBool>,
}

impl Delayed {
    /// Relays loopback connections on a port of its own to `target`, adding `delay` each way.
    pub fn start(target: SocketAddr, delay: Duration) -> std::io::Result<Self> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::Builder::new()
            .name(format!("delay-{port}"))
            .spawn(move || {
                for client in listener.incoming() {
                    if stopped.load(Ordering::Relaxed) {
                        break;
                    }
                    let Ok(client) = client else { continue };
                    let Ok(server) = std::net::TcpStream::connect(target) else {
                        continue;
                    };
                    let _ = relay(client, server, delay);
                }
            })?;
        Ok(Self { port, delay, stop })
    }

    /// `url` (`postgres://user@host:port/db` or `http://host:port`) with its host and port
    /// replaced by this relay's.
    pub fn url_through(&self, url: &str) -> String {
        let (scheme, rest) = url.split_once("://").expect("a URL");
        let (authority, path) = match rest.split_once('/') {
            Some((authority, path)) => (authority, format!("/{path}")),
            None => (rest, String::new()),
        };
        let userinfo = authority
            .rsplit_once('@')
            .map(|(user, _)| format!("{user}@"))
            .unwrap_or_default();
        format!("{scheme}://{userinfo}127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for Delayed {
    /// No new connections (the accepting thread is woken by one of its own); open ones end
    /// when either side closes.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = std::net::TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Both directions of one connection, each a reader thread and a writer thread.
fn relay(client: std::net::TcpStream, server: std::net::TcpStream, delay: Duration) -> std::io::Result<()> {
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    let (client_in, server_out) = (client.try_clone()?, server.try_clone()?);
    one_way(client_in, server_out, delay)?;
    one_way(server, client, delay)?;
    Ok(())
}

/// Copies `from` to `to`, each chunk `delay` after it was read; at the end of `from`, shuts
/// `to`'s writing side (after the same delay), and on an error, both.
fn one_way(from: std::net::TcpStream, to: std::net::TcpStream, delay: Duration) -> std::io::Result<()> {
    use std::io::{Read, Write};
    // `None` is the end of the stream.
    let (chunks, pending) = std::sync::mpsc::channel::<(Instant, Option<Vec<u8>>)>();
    let mut reader = from;
    std::thread::Builder::new().name("delay-read".into()).spawn(move || {
        let mut buffer = vec![0; 64 * 1024];
        loop {
            let read = reader.read(&mut buffer);
            let at = Instant::now();
            match read {
                Ok(n) if n > 0 => {
                    if chunks.send((at, Some(buffer[..n].to_vec()))).is_err() {
                        break;
                    }
                }
                _ => {
                    let _ = chunks.send((at, None));
                    break;
                }
            }
        }
    })?;
    let mut writer = to;
    std::thread::Builder::new().name("delay-write".into()).spawn(move || {
        while let Ok((read_at, chunk)) = pending.recv() {
            let due = read_at + delay;
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            let Some(chunk) = chunk else {
                let _ = writer.shutdown(std::net::Shutdown::Write);
                return;
            };
            if writer.write_all(&chunk).is_err() {
                break;
            }
        }
        // The other side is gone: end both directions of the connection.
        let _ = writer.shutdown(std::net::Shutdown::Both);
    })?;
    Ok(())
}

/// The host and port of a URL (`postgres://`, or `http://` with a port; 5432 when it names none).
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// A server on loopback that writes back what it reads, one connection at a time.
    fn echo() -> SocketAddr {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = listener.local_addr().expect("address");
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                std::thread::spawn(move || {
                    let mut buffer = [0; 4096];
                    while let Ok(n @ 1..) = stream.read(&mut buffer) {
                        if stream.write_all(&buffer[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        address
    }

    fn connect(proxy: &Delayed) -> std::net::TcpStream {
        let stream = std::net::TcpStream::connect(("127.0.0.1", proxy.port)).expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        stream
    }

    #[test]
    fn a_round_trip_takes_twice_the_delay() {
        let delay = Duration::from_millis(30);
        let proxy = Delayed::start(echo(), delay).expect("proxy");
        let mut stream = connect(&proxy);
        for _ in 0..3 {
            let started = Instant::now();
            stream.write_all(b"ping").expect("write");
            let mut answer = [0; 4];
            stream.read_exact(&mut answer).expect("read");
            let took = started.elapsed();
            assert_eq!(&answer, b"ping");
            assert!(took >= 2 * delay, "a round trip took {took:?}, less than 2 x {delay:?}");
            assert!(
                took < 2 * delay + Duration::from_millis(200),
                "a round trip took {took:?}"
            );
        }
    }

    #[test]
    fn chunks_in_a_row_share_the_delay_and_keep_their_order() {
        let delay = Duration::from_millis(100);
        let proxy = Delayed::start(echo(), delay).expect("proxy");
        let mut stream = connect(&proxy);
        let chunks = 20;
        let started = Instant::now();
        let mut sent = Vec::new();
        for i in 0..chunks {
            let chunk = format!("chunk {i:02};");
            stream.write_all(chunk.as_bytes()).expect("write");
            sent.extend_from_slice(chunk.as_bytes());
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut received = vec![0; sent.len()];
        stream.read_exact(&mut received).expect("read");
        let took = started.elapsed();
        assert_eq!(String::from_utf8_lossy(&received), String::from_utf8_lossy(&sent));
        // Serialised, the chunks would take 20 x 200 ms; pipelined, the last one arrives about
        // 2 x 100 ms after it was written, about 100 ms after the first.
        assert!(took >= 2 * delay, "took {took:?}");
        assert!(
            took < Duration::from_millis(800),
            "{chunks} chunks took {took:?}: the delay is serialising them"
        );
    }

    #[test]
    fn urls_go_through_the_relay() {
        let proxy = Delayed::start(echo(), Duration::ZERO).expect("proxy");
        let port = proxy.port;
        assert_eq!(
            proxy.url_through("http://localhost:4566"),
            format!("http://127.0.0.1:{port}")
        );
        assert_eq!(
            proxy.url_through("postgres://postgres@127.0.0.1:5432/postgres"),
            format!("postgres://postgres@127.0.0.1:{port}/postgres")
        );
    }
}
