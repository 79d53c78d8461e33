//! A TCP relay the test controls, standing between svc and one real service
//! so that a test can make that service unreachable or silent without
//! touching the shared server.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use tokio::net::{TcpListener, TcpStream};
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
                        tokio::spawn(relay(client, target, generation));
                    }
                }
            }
        });
        Self {
            address,
            state,
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
        self.switch(Mode::Forward);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.cancel();
        self.state.lock().unwrap().generation.cancel();
    }
}

async fn relay(mut client: TcpStream, target: SocketAddr, generation: CancellationToken) {
    let Ok(mut server) = TcpStream::connect(target).await else {
        return;
    };
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
        () = generation.cancelled() => {}
    }
}
