//! What a connection leaves in the kernel once palaver is done with it.
//!
//! Closing a TCP socket does not free what it still has to send: the kernel
//! keeps the socket, without a descriptor (an orphan, in FIN-WAIT-1), until
//! the peer has taken the data or retransmission gives up, minutes later
//! for a peer that keeps its window shut. A client that never reads (a
//! WebSocket closed as a slow consumer, a response nobody reads, a socket
//! closed at shutdown) could so pin megabytes of kernel memory per socket
//! after palaver has let go of it: 300 such sockets held 1.1 GB for over 95 s
//! (issue 20).
//!
//! Two bounds:
//! - every accepted socket's send buffer is capped (`SO_SNDBUF`,
//!   `TCP_SEND_BUFFER_BYTES`), instead of growing to the kernel's maximum
//!   (4 MiB by default) for a peer that does not read;
//! - a socket dropped with data still queued is watched for a moment
//!   (holding its place under the cap): if the peer takes the data it
//!   closes normally; if nothing moves for [`STALL`] it is reset
//!   (`SO_LINGER` 0: the queue is dropped and the peer gets an RST), and so
//!   is one still queued when the process stops. A peer that reads loses
//!   nothing; one that does not costs nothing once it is let go.

use std::{
    io,
    time::{Duration, Instant},
};

use socket2::{SockRef, Socket};
use tokio::net::TcpStream;

/// How long a dropped socket's queue may stand still before it is reset.
pub const STALL: Duration = Duration::from_secs(2);

/// The longest a dropped socket is watched, even while its queue moves:
/// with a bounded send buffer, a reading peer takes it in far less.
const WATCH_AT_MOST: Duration = Duration::from_secs(30);

/// How often a watched socket's queue is looked at.
const LOOK_EVERY: Duration = Duration::from_millis(250);

/// Caps the send buffer of an accepted socket (the kernel doubles the value
/// for its bookkeeping and stops growing it).
pub fn cap_send_buffer(stream: &TcpStream, bytes: usize) -> io::Result<()> {
    SockRef::from(stream).set_send_buffer_size(bytes)
}

/// Bytes the socket has queued and the peer has not acknowledged, and that
/// can still reach it: none once the connection is gone (reset by the peer,
/// or given up on), though the kernel's count of unacknowledged bytes stays
/// where it was. A client that sends its close frame and closes at once
/// resets the server's reply, so this is the common case of a closing
/// WebSocket: watching such sockets held a descriptor and a place for
/// [`STALL`] each (14,000 at 7,000 handshakes/s).
#[cfg(target_os = "linux")]
fn queued(socket: &Socket) -> usize {
    use std::os::fd::AsRawFd;
    if closed(socket) {
        return 0;
    }
    let mut bytes: libc::c_int = 0;
    // SAFETY: SIOCOUTQ (TIOCOUTQ) writes one int into the pointer given; the
    // descriptor is open for as long as `socket` is borrowed.
    let result = unsafe { libc::ioctl(socket.as_raw_fd(), libc::TIOCOUTQ, &mut bytes) };
    if result == 0 {
        usize::try_from(bytes).unwrap_or(0)
    } else {
        0
    }
}

/// Whether the connection is over in the kernel (`TCP_CLOSE`, 7 in
/// `include/net/tcp_states.h`): reset, or timed out.
#[cfg(target_os = "linux")]
fn closed(socket: &Socket) -> bool {
    use std::os::fd::AsRawFd;
    const TCP_CLOSE: u8 = 7;
    // SAFETY: an all-zero `tcp_info` is a valid value of a plain C struct.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: TCP_INFO writes at most `len` bytes into `info` and the new
    // length into `len`; the descriptor is open while `socket` is borrowed.
    let result = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    result == 0 && info.tcpi_state == TCP_CLOSE
}

#[cfg(not(target_os = "linux"))]
fn queued(_socket: &Socket) -> usize {
    0
}

/// A dropped socket still holding data, and what it keeps while it does
/// (its place under the cap). Dropped, it is closed, and reset first if
/// data is still queued: whether the watch ended, timed out, or was cut
/// short by the runtime stopping.
struct Draining<P> {
    socket: Socket,
    _place: P,
}

impl<P> Drop for Draining<P> {
    fn drop(&mut self) {
        if queued(&self.socket) > 0 {
            let _ = self.socket.set_linger(Some(Duration::ZERO));
        }
    }
}

/// Called as `stream` is dropped: if it still has data queued, a duplicate
/// of its descriptor and `place` are kept until the data is taken or stalls
/// for `stall` (then reset); otherwise nothing is kept and it closes as
/// usual.
pub fn let_go<P: Send + 'static>(stream: &TcpStream, place: P, stall: Duration) {
    let socket = SockRef::from(stream);
    if queued(&socket) == 0 {
        return;
    }
    let Ok(socket) = socket.try_clone() else {
        let _ = SockRef::from(stream).set_linger(Some(Duration::ZERO));
        return;
    };
    let draining = Draining { socket, _place: place };
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => drop(runtime.spawn(watch(draining, stall))),
        // No runtime to watch it on: reset now.
        Err(_) => drop(draining),
    }
}

/// Waits while the queue moves; gives up once it stalls for `stall`.
async fn watch<P>(draining: Draining<P>, stall: Duration) {
    let began = Instant::now();
    let (mut last, mut moved) = (queued(&draining.socket), Instant::now());
    while began.elapsed() < WATCH_AT_MOST {
        tokio::time::sleep(LOOK_EVERY.min(stall)).await;
        let now = queued(&draining.socket);
        if now == 0 {
            return;
        }
        if now < last {
            (last, moved) = (now, Instant::now());
        } else if moved.elapsed() >= stall {
            break;
        }
    }
    drop(draining);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpListener,
        sync::Semaphore,
    };

    /// A connected pair on loopback: (server side, client side).
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        (listener.accept().await.unwrap().0, client)
    }

    /// Writes until the socket takes no more: the peer is not reading.
    async fn fill(stream: &mut TcpStream) -> usize {
        let chunk = vec![b'x'; 64 * 1024];
        let mut sent = 0;
        while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(100), stream.write(&chunk)).await {
            sent += n;
        }
        sent
    }

    /// Reads until the end: `Ok(bytes)` at a clean end, `Err` at a reset.
    async fn read_to_end(stream: &mut TcpStream) -> io::Result<usize> {
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0;
        loop {
            match stream.read(&mut buf).await? {
                0 => return Ok(total),
                n => total += n,
            }
        }
    }

    #[tokio::test]
    async fn the_send_buffer_is_capped() {
        let (server, _client) = pair().await;
        cap_send_buffer(&server, 64 * 1024).unwrap();
        // Linux doubles it for bookkeeping.
        let size = SockRef::from(&server).send_buffer_size().unwrap();
        assert!((64 * 1024..=128 * 1024).contains(&size), "{size}");
    }

    #[tokio::test]
    async fn a_socket_dropped_with_data_its_peer_never_takes_is_reset_and_its_place_given_back() {
        let (mut server, mut client) = pair().await;
        cap_send_buffer(&server, 64 * 1024).unwrap();
        let sent = fill(&mut server).await;
        let places = Arc::new(Semaphore::new(1));
        let place = places.clone().try_acquire_owned().unwrap();
        let_go(&server, place, Duration::from_millis(300));
        drop(server);
        assert_eq!(places.available_permits(), 0, "kept while it is watched");
        let _ = tokio::time::timeout(Duration::from_secs(5), places.acquire()).await.expect("given back");
        let read = read_to_end(&mut client).await;
        assert_eq!(read.map_err(|e| e.kind()), Err(io::ErrorKind::ConnectionReset), "{sent} bytes were queued");
    }

    #[tokio::test]
    async fn a_socket_its_peer_has_reset_is_let_go_at_once() {
        let (mut server, client) = pair().await;
        cap_send_buffer(&server, 64 * 1024).unwrap();
        fill(&mut server).await;
        // The peer resets, as a client that closes right after its close
        // frame does to the server's reply.
        SockRef::from(&client).set_linger(Some(Duration::ZERO)).unwrap();
        drop(client);
        let reset = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                if let Err(err) = server.write(b"x").await {
                    return err.kind();
                }
            }
        });
        assert!(matches!(
            reset.await.expect("the reset arrives"),
            io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
        ));
        let places = Arc::new(Semaphore::new(1));
        let_go(&server, places.clone().try_acquire_owned().unwrap(), Duration::from_secs(60));
        assert_eq!(places.available_permits(), 1, "nothing to drain, nothing held");
    }

    #[test]
    fn a_socket_still_watched_when_the_runtime_stops_is_reset() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let client = runtime.block_on(async {
            let (mut server, client) = pair().await;
            fill(&mut server).await;
            let places = Arc::new(Semaphore::new(1));
            let_go(&server, places.clone().try_acquire_owned().unwrap(), Duration::from_secs(60));
            drop(server);
            client.into_std().unwrap()
        });
        // As at the end of `main`: the watch is dropped, not finished.
        drop(runtime);
        client.set_nonblocking(false).unwrap();
        client.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        let ended = loop {
            match std::io::Read::read(&mut &client, &mut buf) {
                Ok(0) => break Ok(()),
                Ok(_) => continue,
                Err(err) => break Err(err.kind()),
            }
        };
        assert_eq!(ended, Err(io::ErrorKind::ConnectionReset));
    }

    #[tokio::test]
    async fn a_socket_dropped_with_data_its_peer_takes_closes_with_all_of_it() {
        let (mut server, mut client) = pair().await;
        let sent = fill(&mut server).await;
        let places = Arc::new(Semaphore::new(1));
        let_go(&server, places.clone().try_acquire_owned().unwrap(), Duration::from_millis(300));
        drop(server);
        assert_eq!(read_to_end(&mut client).await.unwrap(), sent, "everything, then a clean end");
    }
}
