//! A TCP relay the test controls, standing between svc and one real service
//! so that a test can make that service unreachable or silent without
//! touching the shared server.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Relay bytes both ways.
    Forward,
    /// Refuse connections: the service is down.
    Refuse,
    /// Accept connections and never answer: the service hangs.
    Silent,
}

struct State {
    mode: Mode,
    /// Cancelled to drop every connection of the current generation.
    generation: CancellationToken,
}

pub struct FaultProxy {
    pub address: SocketAddr,
    state: Arc<Mutex<State>>,
    /// While set, bytes from the service are read and thrown away: requests
    /// still arrive, their answers never do.
    swallow_replies: Arc<AtomicBool>,
    stop: CancellationToken,
}

impl FaultProxy {
    pub async fn start(target: &str) -> Self {
        let target: SocketAddr = tokio::net::lookup_host(target)
            .await
            .unwrap()
            .next()
            .expect("the target resolves");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State {
            mode: Mode::Forward,
            generation: CancellationToken::new(),
        }));
        let stop = CancellationToken::new();
        let swallow_replies = Arc::new(AtomicBool::new(false));
        let accept_swallow = swallow_replies.clone();
        let accept_state = state.clone();
        let accept_stop = stop.clone();
        tokio::spawn(async move {
            loop {
                let (client, _) = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok(pair) => pair,
                        Err(_) => continue,
                    },
                    () = accept_stop.cancelled() => return,
                };
                let (mode, generation) = {
                    let state = accept_state.lock().unwrap();
                    (state.mode, state.generation.clone())
                };
                match mode {
                    Mode::Refuse => drop(client),
                    Mode::Silent => {
                        tokio::spawn(async move {
                            generation.cancelled().await;
                            drop(client);
                        });
                    }
                    Mode::Forward => {
                        tokio::spawn(relay(client, target, generation, accept_swallow.clone()));
                    }
                }
            }
        });
        Self {
            address,
            state,
            swallow_replies,
            stop,
        }
    }

    /// The target's URL with its host and port replaced by the proxy's.
    pub fn url_for(&self, url: &str) -> String {
        let mut url = url::Url::parse(url).unwrap();
        url.set_ip_host(self.address.ip()).unwrap();
        url.set_port(Some(self.address.port())).unwrap();
        url.to_string()
    }

    fn switch(&self, mode: Mode) {
        let mut state = self.state.lock().unwrap();
        state.mode = mode;
        state.generation.cancel();
        state.generation = CancellationToken::new();
    }

    /// Drops every connection and refuses new ones.
    pub fn cut(&self) {
        self.switch(Mode::Refuse);
    }

    /// Drops every connection; new ones are accepted and never answered.
    pub fn silence(&self) {
        self.switch(Mode::Silent);
    }

    /// Relays again.
    pub fn restore(&self) {
        self.swallow_replies.store(false, Ordering::SeqCst);
        self.switch(Mode::Forward);
    }

    /// Keeps relaying requests but throws the service's answers away.
    pub fn swallow_replies(&self) {
        self.swallow_replies.store(true, Ordering::SeqCst);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.cancel();
        self.state.lock().unwrap().generation.cancel();
    }
}

async fn relay(
    client: TcpStream,
    target: SocketAddr,
    generation: CancellationToken,
    swallow_replies: Arc<AtomicBool>,
) {
    let Ok(server) = TcpStream::connect(target).await else {
        return;
    };
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let never = Arc::new(AtomicBool::new(false));
    tokio::select! {
        () = pump(client_read, server_write, never) => {}
        () = pump(server_read, client_write, swallow_replies) => {}
        () = generation.cancelled() => {}
    }
}

/// Copies bytes one way until either side closes, dropping them while `swallow` is set.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    swallow: Arc<AtomicBool>,
) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => read,
        };
        if swallow.load(Ordering::SeqCst) {
            continue;
        }
        if to.write_all(&buffer[..read]).await.is_err() {
            return;
        }
    }
}
