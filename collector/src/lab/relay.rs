//! A UDP relay that delays every datagram, standing in for a long underlay path: netem is not
//! in every kernel. It runs on threads inside the delayed peer's namespace, between its
//! wireguard-go (on loopback) and the gateway.

use std::{
    net::{SocketAddr, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use super::{LabError, netns};

/// How often the relay's threads look at their stop flag.
const POLL: Duration = Duration::from_millis(50);

/// A running relay; dropping it stops its threads.
#[derive(Debug)]
pub(super) struct DelayRelay {
    stop: Arc<AtomicBool>,
    /// The delay each way, nanoseconds; [`DelayRelay::set_one_way`] changes it.
    one_way: Arc<AtomicU64>,
    threads: Vec<JoinHandle<()>>,
}

impl DelayRelay {
    /// Relays between `local` (where the peer's wireguard-go sends, on loopback; its
    /// datagrams go on to `far`) and `outer` (where `far` sends), delaying each datagram by
    /// `one_way`.
    pub(super) fn start(
        namespace: &str,
        local: SocketAddr,
        wireguard: SocketAddr,
        outer: SocketAddr,
        far: SocketAddr,
        one_way: Duration,
    ) -> Result<Self, LabError> {
        let stop = Arc::new(AtomicBool::new(false));
        let one_way = Arc::new(AtomicU64::new(nanos(one_way)));
        let bind = |address: SocketAddr| {
            let socket = UdpSocket::bind(address)?;
            socket.set_read_timeout(Some(POLL))?;
            Ok::<_, std::io::Error>(socket)
        };
        let sockets = netns::in_namespace(namespace, || {
            Ok::<_, std::io::Error>((bind(local)?, bind(outer)?))
        })?
        .map_err(|source| LabError::File {
            what: "binding the relay at",
            path: local.to_string().into(),
            source,
        })?;
        let (local, outer) = sockets;
        let (local, outer) = (Arc::new(local), Arc::new(outer));
        let mut threads = Vec::new();
        // wireguard-go -> far, and far -> wireguard-go.
        for (from, to, destination) in [(&local, &outer, far), (&outer, &local, wireguard)] {
            let (queue, delayed) = mpsc::channel::<(Instant, Vec<u8>)>();
            let (from, to) = (Arc::clone(from), Arc::clone(to));
            let receiving = Arc::clone(&stop);
            let delay = Arc::clone(&one_way);
            threads.push(thread::spawn(move || {
                let mut buffer = vec![0u8; 65_536];
                while !receiving.load(Ordering::SeqCst) {
                    if let Ok((length, _)) = from.recv_from(&mut buffer) {
                        let due =
                            Instant::now() + Duration::from_nanos(delay.load(Ordering::Relaxed));
                        if queue.send((due, buffer[..length].to_vec())).is_err() {
                            return;
                        }
                    }
                }
            }));
            let sending = Arc::clone(&stop);
            threads.push(thread::spawn(move || {
                while !sending.load(Ordering::SeqCst) {
                    let Ok((due, datagram)) = delayed.recv_timeout(POLL) else { continue };
                    thread::sleep(due.saturating_duration_since(Instant::now()));
                    let _sent = to.send_to(&datagram, destination);
                }
            }));
        }
        Ok(Self { stop, one_way, threads })
    }

    /// Delays the datagrams received from now on by `one_way`.
    pub(super) fn set_one_way(&self, one_way: Duration) {
        self.one_way.store(nanos(one_way), Ordering::Relaxed);
    }
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

impl Drop for DelayRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for thread in self.threads.drain(..) {
            let _joined = thread.join();
        }
    }
}
