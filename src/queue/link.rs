//! [`ConfirmLink`]: one AMQP connection that does nothing but publish, on a
//! few channels in confirm mode, spoken directly over a tokio socket.
//!
//! Why not lapin, which `consume` and the topology use: on the write path
//! lapin cost about a third of svc's instructions per accepted write (its
//! promise per publish, its frame queue, and a wake-up of its own I/O
//! thread for every message; docs/PERFORMANCE.md). Publishing with confirms
//! needs little of the protocol, so here a publish is three frames appended
//! to a shared buffer under a lock, with the delivery tag taken in the same
//! place so tags follow wire order. One writer task sends whatever has
//! gathered in one write; one reader task settles confirms as they arrive.
//!
//! What the link answers for:
//! - basic.ack and basic.nack, single or `multiple`, settle the publishes
//!   they name;
//! - a mandatory message returned unroutable (basic.return, then its
//!   content header naming the message id) settles as [`Settled::Returned`]
//!   when its ack comes;
//! - connection.blocked (a broker resource alarm) refuses publishes at once
//!   until connection.unblocked, instead of letting them wait out a timeout;
//! - heartbeats both ways, as negotiated: a broker silent for two intervals
//!   is taken for lost;
//! - a closed channel or connection, a socket error or a malformed frame
//!   loses the link: every publish awaiting a confirm settles as
//!   [`Settled::Lost`], and the owner opens a new link.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::Duration,
};

use amq_protocol::{
    protocol::{AMQPClass, basic, channel, confirm, connection},
    types::{AMQPValue, FieldTable, LongString},
    uri::{AMQPScheme, AMQPUri},
};
use bytes::BytesMut;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{
        TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
    sync::{Notify, Semaphore, SemaphorePermit, oneshot},
};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::wire::{self, Incoming, Publish};

/// How long opening a link may take unless the URL's `connection_timeout`
/// says otherwise.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// The frame size asked for when the broker sets no limit.
const DEFAULT_FRAME_MAX: u32 = 128 * 1024;
/// Frames before tuning are small; this only bounds a broken peer.
const HANDSHAKE_FRAME_MAX: usize = 1 << 20;
/// What each of the two send buffers starts with.
const SEND_BUFFER: usize = 64 * 1024;
/// A send buffer that grew past this during a burst is not kept.
const KEPT_BUFFER: usize = 1 << 20;

/// Why a link could not be opened, or was lost.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("not an AMQP URL ({0})")]
    Url(String),
    #[error("amqps needs TLS, which this build of svc does not include")]
    NoTls,
    #[error("cannot reach the broker: {0}")]
    Io(#[from] std::io::Error),
    #[error("the broker did not complete the handshake within {0:?}")]
    Timeout(Duration),
    #[error("the broker offers no PLAIN login (it offers {0})")]
    NoPlainLogin(String),
    #[error("{}", closed_by_broker(*channel, *code, text))]
    Refused {
        channel: u16,
        code: u16,
        text: String,
    },
    #[error("the broker sent {got} where {expected} was due")]
    Unexpected { expected: &'static str, got: String },
    #[error("the broker allows {allowed} channels, {wanted} are configured")]
    TooManyChannels { allowed: u16, wanted: u16 },
    #[error(transparent)]
    Malformed(#[from] wire::MalformedFrame),
    #[error("the broker connection was lost: {0}")]
    Lost(Arc<str>),
    #[error("declaring the topology")]
    Topology(#[from] lapin::Error),
}

/// How one publish ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled {
    /// Confirmed: stored in a queue.
    Ack,
    /// Refused by the broker.
    Nack,
    /// Confirmed, but returned: no queue holds it.
    Returned,
    /// Not sent: the broker blocks publishers (a resource alarm).
    Blocked,
    /// The link went down before the confirm; the message may or may not be stored.
    Lost(Arc<str>),
}

/// What a link publishes to, and how.
#[derive(Debug, Clone)]
pub struct LinkSettings {
    /// Shown in the broker's management UI.
    pub name: String,
    pub channels: u16,
    pub exchange: String,
    pub routing_key: String,
    /// Most publishes awaiting their confirm at once, over all channels.
    pub window: usize,
}

/// An open publishing connection. Dropping it closes the connection.
pub struct ConfirmLink {
    shared: Arc<Shared>,
    exchange: String,
    routing_key: String,
    /// A permit per publish whose caller awaits its confirm (one that gave
    /// up, past the publish timeout, frees its permit). Past the window,
    /// publishes wait here, first come first served, rather than in the
    /// broker: with a thousand writes in flight, a broker holding all of
    /// them confirms them out of step (some twice as late as the rest),
    /// while one holding a few hundred keeps the same pace and confirms in
    /// turn (docs/PERFORMANCE.md, "The publish window").
    window: Semaphore,
}

struct Shared {
    state: Mutex<State>,
    /// Wakes the writer: a stored permit, so no wake-up is lost.
    outgoing: Notify,
    /// Wakes the publishes waiting for a turn in the window when the broker
    /// blocks publishing, so that they are refused at once too.
    blocking: Notify,
    /// Cancelled once the link is lost or closed; stops both tasks.
    down: CancellationToken,
    frame_max: usize,
}

struct State {
    /// Frames waiting for the writer.
    out: Vec<u8>,
    /// Channel `n` is `channels[n - 1]`.
    channels: Vec<ChannelState>,
    next_channel: usize,
    blocked: bool,
    lost: Option<Arc<str>>,
}

#[derive(Default)]
struct ChannelState {
    /// The last delivery tag given; the broker numbers publishes from 1.
    last_tag: u64,
    /// Publishes awaiting their confirm, by ascending tag.
    unconfirmed: VecDeque<Unconfirmed>,
    /// A basic.return arrived; its content header names the message.
    return_pending: bool,
}

struct Unconfirmed {
    tag: u64,
    id: Uuid,
    returned: bool,
    reply: oneshot::Sender<Settled>,
}

impl ConfirmLink {
    /// Connects to `url`, logs in, and opens the channels in confirm mode.
    pub async fn open(url: &str, settings: &LinkSettings) -> Result<Self, LinkError> {
        let uri: AMQPUri = url.parse().map_err(LinkError::Url)?;
        if uri.scheme == AMQPScheme::AMQPS {
            return Err(LinkError::NoTls);
        }
        let within = uri
            .query
            .connection_timeout
            .map_or(OPEN_TIMEOUT, Duration::from_millis);
        let opened = tokio::time::timeout(within, Handshake::run(&uri, settings))
            .await
            .map_err(|_| LinkError::Timeout(within))??;
        Ok(Self::start(opened, settings))
    }

    fn start(opened: Opened, settings: &LinkSettings) -> Self {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                out: Vec::with_capacity(SEND_BUFFER),
                channels: (0..settings.channels)
                    .map(|_| ChannelState::default())
                    .collect(),
                next_channel: 0,
                blocked: false,
                lost: None,
            }),
            outgoing: Notify::new(),
            blocking: Notify::new(),
            down: CancellationToken::new(),
            frame_max: opened.frame_max,
        });
        let (read, write) = opened.stream.into_split();
        let silence = opened.heartbeat.map(|interval| interval * 2);
        tokio::spawn(read_frames(read, opened.buffer, shared.clone(), silence));
        tokio::spawn(write_frames(write, shared.clone(), opened.heartbeat));
        Self {
            shared,
            exchange: settings.exchange.clone(),
            routing_key: settings.routing_key.clone(),
            window: Semaphore::new(settings.window),
        }
    }

    /// Whether the link can still carry publishes.
    pub fn is_up(&self) -> bool {
        !self.shared.down.is_cancelled()
    }

    /// Publishes `body` as a persistent, mandatory JSON message with message
    /// id `id`, and waits for the broker's verdict.
    pub async fn publish(&self, id: Uuid, body: &[u8]) -> Settled {
        // Held until the verdict.
        let _turn = match self.window.try_acquire() {
            Ok(turn) => turn,
            Err(_) => match self.wait_for_turn().await {
                Ok(turn) => turn,
                Err(refused) => return refused,
            },
        };
        let mut id_text = Uuid::encode_buffer();
        let publish = Publish {
            channel: 0,
            exchange: &self.exchange,
            routing_key: &self.routing_key,
            mandatory: true,
            message_id: id.hyphenated().encode_lower(&mut id_text),
            body,
        };
        let (reply, settled) = oneshot::channel();
        let was_idle = {
            let mut state = self.shared.state.lock().expect("lock is never poisoned");
            if let Some(reason) = &state.lost {
                return Settled::Lost(reason.clone());
            }
            if state.blocked {
                return Settled::Blocked;
            }
            let index = state.next_channel;
            state.next_channel = (index + 1) % state.channels.len();
            let was_idle = state.out.is_empty();
            let channel = index as u16 + 1;
            wire::put_publish(
                &mut state.out,
                &Publish { channel, ..publish },
                self.shared.frame_max,
            );
            state.channels[index].sent(id, reply);
            was_idle
        };
        if was_idle {
            self.shared.outgoing.notify_one();
        }
        settled
            .await
            .unwrap_or_else(|_| Settled::Lost("the link was dropped".into()))
    }

    /// Waits for a turn in a full window, unless the broker blocks
    /// publishing meanwhile: then the publish is refused at once, as one
    /// arriving now would be. (A lost link settles every publish awaiting a
    /// confirm, which frees their turns; the publish then finds it lost.)
    async fn wait_for_turn(&self) -> Result<SemaphorePermit<'_>, Settled> {
        let blocking = self.shared.blocking.notified();
        tokio::pin!(blocking);
        // Registered before looking, so a block arriving in between still wakes it.
        blocking.as_mut().enable();
        if self
            .shared
            .state
            .lock()
            .expect("lock is never poisoned")
            .blocked
        {
            return Err(Settled::Blocked);
        }
        tokio::select! {
            turn = self.window.acquire() => Ok(turn.expect("the window is never closed")),
            () = blocking => Err(Settled::Blocked),
        }
    }

    /// Closes the connection: publishes still awaiting a confirm settle as lost.
    pub fn close(&self) {
        let close = wire::method_frame(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
                reply_code: 200,
                reply_text: "closed by svc".into(),
                class_id: 0,
                method_id: 0,
            })),
        );
        self.shared.lose("closed by svc".into(), &close);
    }
}

impl Drop for ConfirmLink {
    fn drop(&mut self) {
        if self.is_up() {
            self.close();
        }
    }
}

impl State {
    fn channel(&mut self, number: u16) -> Option<&mut ChannelState> {
        let index = usize::from(number).checked_sub(1)?;
        self.channels.get_mut(index)
    }
}

impl ChannelState {
    fn sent(&mut self, id: Uuid, reply: oneshot::Sender<Settled>) {
        // Publishes whose caller gave up (timed out) need no answer; the
        // oldest go first so a silent broker cannot make the queue grow
        // for ever.
        while self
            .unconfirmed
            .front()
            .is_some_and(|oldest| oldest.reply.is_closed())
        {
            self.unconfirmed.pop_front();
        }
        self.last_tag += 1;
        self.unconfirmed.push_back(Unconfirmed {
            tag: self.last_tag,
            id,
            returned: false,
            reply,
        });
    }

    /// Settles the publish tagged `tag`, or with `multiple` every one up to it.
    fn confirm(&mut self, tag: u64, multiple: bool, acked: bool) {
        let settle = |publish: Unconfirmed| {
            let settled = match (acked, publish.returned) {
                (true, false) => Settled::Ack,
                (true, true) => Settled::Returned,
                (false, _) => Settled::Nack,
            };
            let _ = publish.reply.send(settled);
        };
        if multiple {
            while let Some(oldest) = self.unconfirmed.front()
                && oldest.tag <= tag
            {
                settle(self.unconfirmed.pop_front().expect("just seen"));
            }
        } else if let Ok(at) = self
            .unconfirmed
            .binary_search_by_key(&tag, |publish| publish.tag)
        {
            settle(self.unconfirmed.remove(at).expect("just found"));
        }
    }

    fn returned(&mut self, message_id: Option<&str>) {
        let id = message_id.and_then(|id| Uuid::try_parse(id).ok());
        if let Some(publish) = self.unconfirmed.iter_mut().find(|p| Some(p.id) == id) {
            publish.returned = true;
        }
    }
}

impl Shared {
    /// Takes the link down for `reason`: every publish awaiting a confirm
    /// settles as lost, `last_words` are the writer's final frames.
    fn lose(&self, reason: Arc<str>, last_words: &[u8]) {
        let mut state = self.state.lock().expect("lock is never poisoned");
        if state.lost.is_some() {
            return;
        }
        tracing::debug!(%reason, "publishing link down");
        state.lost = Some(reason.clone());
        state.out.extend_from_slice(last_words);
        for channel in &mut state.channels {
            for publish in channel.unconfirmed.drain(..) {
                let _ = publish.reply.send(Settled::Lost(reason.clone()));
            }
        }
        drop(state);
        self.down.cancel();
        self.outgoing.notify_one();
    }

    /// Acts on one frame from the broker; `Err` takes the link down.
    fn receive(&self, frame: Incoming) -> Result<(), (Arc<str>, Vec<u8>)> {
        let mut state = self.state.lock().expect("lock is never poisoned");
        match frame {
            Incoming::Method(number, AMQPClass::Basic(method)) => {
                let Some(channel) = state.channel(number) else {
                    return Ok(());
                };
                match method {
                    basic::AMQPMethod::Ack(ack) => {
                        channel.confirm(ack.delivery_tag, ack.multiple, true)
                    }
                    basic::AMQPMethod::Nack(nack) => {
                        channel.confirm(nack.delivery_tag, nack.multiple, false);
                    }
                    basic::AMQPMethod::Return(_) => channel.return_pending = true,
                    _ => {}
                }
            }
            Incoming::Header {
                channel: number,
                message_id,
            } => {
                if let Some(channel) = state.channel(number)
                    && std::mem::take(&mut channel.return_pending)
                {
                    channel.returned(message_id.as_deref());
                }
            }
            Incoming::Method(0, AMQPClass::Connection(method)) => match method {
                connection::AMQPMethod::Blocked(blocked) => {
                    tracing::warn!(reason = %blocked.reason, "the broker blocks publishing");
                    state.blocked = true;
                    self.blocking.notify_waiters();
                }
                connection::AMQPMethod::Unblocked(_) => {
                    tracing::info!("the broker lets publishing resume");
                    state.blocked = false;
                }
                connection::AMQPMethod::Close(close) => {
                    let close_ok = wire::method_frame(
                        0,
                        AMQPClass::Connection(connection::AMQPMethod::CloseOk(
                            connection::CloseOk {},
                        )),
                    );
                    let reason = closed_by_broker(0, close.reply_code, close.reply_text.as_str());
                    return Err((reason.into(), close_ok));
                }
                connection::AMQPMethod::CloseOk(_) => {
                    return Err(("closed by svc".into(), Vec::new()));
                }
                _ => {}
            },
            Incoming::Method(number, AMQPClass::Channel(channel::AMQPMethod::Close(close))) => {
                let close_ok = wire::method_frame(
                    number,
                    AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
                );
                let reason = closed_by_broker(number, close.reply_code, close.reply_text.as_str());
                return Err((reason.into(), close_ok));
            }
            Incoming::Method(..) | Incoming::Body | Incoming::Heartbeat => {}
        }
        Ok(())
    }
}

/// Reads and acts on frames until the link goes down; a broker silent for
/// `silence` (two heartbeat intervals) is taken for lost.
async fn read_frames(
    mut read: OwnedReadHalf,
    mut buffer: BytesMut,
    shared: Arc<Shared>,
    silence: Option<Duration>,
) {
    let (reason, last_words): (Arc<str>, Vec<u8>) = 'read: loop {
        loop {
            match wire::take_frame(&mut buffer, shared.frame_max) {
                Ok(Some(frame)) => {
                    if let Err(down) = shared.receive(frame) {
                        break 'read down;
                    }
                }
                Ok(None) => break,
                Err(malformed) => break 'read (malformed.to_string().into(), Vec::new()),
            }
        }
        let received = async {
            match silence {
                Some(silence) => tokio::time::timeout(silence, read.read_buf(&mut buffer)).await,
                None => Ok(read.read_buf(&mut buffer).await),
            }
        };
        tokio::select! {
            () = shared.down.cancelled() => return,
            received = received => match received {
                Ok(Ok(0)) => break 'read ("the broker closed the socket".into(), Vec::new()),
                Ok(Ok(_)) => {}
                Ok(Err(err)) => break 'read (format!("reading from the broker: {err}").into(), Vec::new()),
                Err(_) => break 'read (
                    format!("no frame from the broker in {silence:?}, twice its heartbeat").into(),
                    Vec::new(),
                ),
            },
        }
    };
    shared.lose(reason, &last_words);
}

/// Sends what publishes have gathered, one write at a time; a heartbeat
/// when nothing was sent for half the interval. After the link goes down it
/// sends the last words and shuts the socket.
async fn write_frames(mut write: OwnedWriteHalf, shared: Arc<Shared>, heartbeat: Option<Duration>) {
    let mut sending = Vec::with_capacity(SEND_BUFFER);
    loop {
        let woken = match heartbeat {
            Some(interval) => tokio::time::timeout(interval / 2, shared.outgoing.notified())
                .await
                .is_ok(),
            None => {
                shared.outgoing.notified().await;
                true
            }
        };
        if woken {
            // Woken by the first publish into an empty buffer. tokio runs a
            // task woken this way next, before the requests that are about to
            // publish too: one write per message. Yielding once lets them
            // add theirs, so one write carries many (wrk at 64 connections:
            // about one write per publish without it).
            tokio::task::yield_now().await;
        }
        let down = {
            let mut state = shared.state.lock().expect("lock is never poisoned");
            std::mem::swap(&mut state.out, &mut sending);
            state.lost.is_some()
        };
        if !woken && sending.is_empty() {
            sending.extend_from_slice(&wire::HEARTBEAT);
        }
        if !sending.is_empty() {
            if let Err(err) = write.write_all(&sending).await {
                shared.lose(format!("writing to the broker: {err}").into(), &[]);
                break;
            }
            sending.clear();
            if sending.capacity() > KEPT_BUFFER {
                sending = Vec::with_capacity(SEND_BUFFER);
            }
        }
        if down {
            break;
        }
    }
    let _ = write.shutdown().await;
}

/// A connection logged in, tuned, with its channels in confirm mode.
struct Opened {
    stream: TcpStream,
    /// Bytes already read past the handshake.
    buffer: BytesMut,
    frame_max: usize,
    heartbeat: Option<Duration>,
}

/// The opening of a connection, one method and its answer at a time.
struct Handshake {
    stream: TcpStream,
    buffer: BytesMut,
}

impl Handshake {
    async fn run(uri: &AMQPUri, settings: &LinkSettings) -> Result<Opened, LinkError> {
        let authority = &uri.authority;
        let stream = TcpStream::connect((authority.host.as_str(), authority.port)).await?;
        stream.set_nodelay(true)?;
        let mut handshake = Self {
            stream,
            buffer: BytesMut::with_capacity(8 * 1024),
        };
        handshake.stream.write_all(wire::PROTOCOL_HEADER).await?;

        let start = handshake
            .expect("connection.start", 0, |method| match method {
                AMQPClass::Connection(connection::AMQPMethod::Start(start)) => Some(start),
                _ => None,
            })
            .await?;
        let mechanisms = String::from_utf8_lossy(start.mechanisms.as_bytes()).into_owned();
        if !mechanisms.split_whitespace().any(|m| m == "PLAIN") {
            return Err(LinkError::NoPlainLogin(mechanisms));
        }
        let user = &authority.userinfo;
        let login = format!("\0{}\0{}", user.username, user.password);
        handshake
            .send(
                0,
                AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
                    client_properties: client_properties(&settings.name),
                    mechanism: "PLAIN".into(),
                    response: LongString::from(login.into_bytes()),
                    locale: "en_US".into(),
                })),
            )
            .await?;

        let tune = handshake
            .expect("connection.tune", 0, |method| match method {
                AMQPClass::Connection(connection::AMQPMethod::Tune(tune)) => Some(tune),
                _ => None,
            })
            .await?;
        let channel_max = lower_limit(tune.channel_max, uri.query.channel_max.unwrap_or(0));
        if channel_max != 0 && settings.channels > channel_max {
            return Err(LinkError::TooManyChannels {
                allowed: channel_max,
                wanted: settings.channels,
            });
        }
        let frame_max = match lower_limit(tune.frame_max, uri.query.frame_max.unwrap_or(0)) {
            0 => DEFAULT_FRAME_MAX,
            limit => limit,
        };
        let heartbeat = uri.query.heartbeat.unwrap_or(tune.heartbeat);
        handshake
            .send(
                0,
                AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
                    channel_max,
                    frame_max,
                    heartbeat,
                })),
            )
            .await?;
        handshake
            .call(
                0,
                AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
                    virtual_host: uri.vhost.as_str().into(),
                })),
                "connection.open-ok",
                |method| {
                    matches!(
                        method,
                        AMQPClass::Connection(connection::AMQPMethod::OpenOk(_))
                    )
                },
            )
            .await?;
        for number in 1..=settings.channels {
            handshake
                .call(
                    number,
                    AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
                    "channel.open-ok",
                    |method| matches!(method, AMQPClass::Channel(channel::AMQPMethod::OpenOk(_))),
                )
                .await?;
            handshake
                .call(
                    number,
                    AMQPClass::Confirm(confirm::AMQPMethod::Select(confirm::Select {
                        nowait: false,
                    })),
                    "confirm.select-ok",
                    |method| matches!(method, AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(_))),
                )
                .await?;
        }
        Ok(Opened {
            stream: handshake.stream,
            buffer: handshake.buffer,
            frame_max: frame_max as usize,
            heartbeat: (heartbeat > 0).then(|| Duration::from_secs(heartbeat.into())),
        })
    }

    /// Sends `method` on `channel` and waits for the answer `is_answer` accepts.
    async fn call(
        &mut self,
        channel: u16,
        method: AMQPClass,
        answer: &'static str,
        is_answer: impl Fn(&AMQPClass) -> bool,
    ) -> Result<(), LinkError> {
        self.send(channel, method).await?;
        self.expect(answer, channel, |method| is_answer(&method).then_some(()))
            .await
    }

    async fn send(&mut self, channel: u16, method: AMQPClass) -> Result<(), LinkError> {
        self.stream
            .write_all(&wire::method_frame(channel, method))
            .await?;
        Ok(())
    }

    /// The next method on `channel`, which `wanted` must accept; a
    /// connection.close or channel.close in its place is the broker's refusal.
    async fn expect<T>(
        &mut self,
        expected: &'static str,
        channel: u16,
        wanted: impl Fn(AMQPClass) -> Option<T>,
    ) -> Result<T, LinkError> {
        loop {
            while let Some(frame) = wire::take_frame(&mut self.buffer, HANDSHAKE_FRAME_MAX)? {
                let Incoming::Method(number, method) = frame else {
                    continue; // a heartbeat
                };
                if let Some(refusal) = refusal(number, &method) {
                    return Err(refusal);
                }
                if number != channel {
                    return Err(LinkError::Unexpected {
                        expected,
                        got: format!("a method on channel {number}"),
                    });
                }
                let got = format!("{method:?}");
                return wanted(method).ok_or(LinkError::Unexpected { expected, got });
            }
            if self.stream.read_buf(&mut self.buffer).await? == 0 {
                return Err(LinkError::Io(std::io::ErrorKind::UnexpectedEof.into()));
            }
        }
    }
}

/// A close from the broker, as the error it explains.
fn refusal(channel: u16, method: &AMQPClass) -> Option<LinkError> {
    let (code, text) = match method {
        AMQPClass::Connection(connection::AMQPMethod::Close(close)) => {
            (close.reply_code, &close.reply_text)
        }
        AMQPClass::Channel(channel::AMQPMethod::Close(close)) => {
            (close.reply_code, &close.reply_text)
        }
        _ => return None,
    };
    Some(LinkError::Refused {
        channel,
        code,
        text: text.to_string(),
    })
}

/// Why the broker closed the connection (channel 0) or one channel, in its words.
fn closed_by_broker(channel: u16, code: u16, text: &str) -> String {
    match channel {
        0 => format!("the broker closed the connection: {code} {text}"),
        channel => format!("the broker closed channel {channel}: {code} {text}"),
    }
}

/// The lower of two limits where 0 means none.
fn lower_limit<T: Ord + Default + Copy>(ours: T, theirs: T) -> T {
    let none = T::default();
    match (ours == none, theirs == none) {
        (true, _) => theirs,
        (_, true) => ours,
        _ => ours.min(theirs),
    }
}

/// What the broker shows of this connection, and what it may send it.
fn client_properties(name: &str) -> FieldTable {
    let mut capabilities = FieldTable::default();
    for capability in [
        "publisher_confirms",
        "basic.nack",
        "connection.blocked",
        "authentication_failure_close",
    ] {
        capabilities.insert(capability.into(), AMQPValue::Boolean(true));
    }
    let mut properties = FieldTable::default();
    properties.insert("product".into(), AMQPValue::LongString("svc".into()));
    properties.insert(
        "version".into(),
        AMQPValue::LongString(env!("CARGO_PKG_VERSION").into()),
    );
    properties.insert("connection_name".into(), AMQPValue::LongString(name.into()));
    properties.insert("capabilities".into(), AMQPValue::FieldTable(capabilities));
    properties
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A link with no socket: what the reader would receive is fed by hand.
    fn detached(channels: u16) -> ConfirmLink {
        detached_with_window(channels, Semaphore::MAX_PERMITS)
    }

    fn detached_with_window(channels: u16, window: usize) -> ConfirmLink {
        ConfirmLink {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    out: Vec::new(),
                    channels: (0..channels).map(|_| ChannelState::default()).collect(),
                    next_channel: 0,
                    blocked: false,
                    lost: None,
                }),
                outgoing: Notify::new(),
                blocking: Notify::new(),
                down: CancellationToken::new(),
                frame_max: 4096,
            }),
            exchange: "svc.data".into(),
            routing_key: "data.ingest".into(),
            window: Semaphore::new(window),
        }
    }

    fn basic(channel: u16, method: basic::AMQPMethod) -> Incoming {
        Incoming::Method(channel, AMQPClass::Basic(method))
    }

    fn ack(channel: u16, delivery_tag: u64, multiple: bool) -> Incoming {
        basic(
            channel,
            basic::AMQPMethod::Ack(basic::Ack {
                delivery_tag,
                multiple,
            }),
        )
    }

    /// Starts `count` publishes (spread over the channels in turn) and
    /// returns them with their ids.
    fn publish_many(
        link: &Arc<ConfirmLink>,
        count: usize,
    ) -> Vec<(Uuid, tokio::task::JoinHandle<Settled>)> {
        (0..count)
            .map(|_| {
                let id = Uuid::now_v7();
                let link = link.clone();
                (
                    id,
                    tokio::spawn(async move { link.publish(id, b"{}").await }),
                )
            })
            .collect()
    }

    /// How many publishes have been sent, over all channels.
    fn sent(link: &ConfirmLink) -> u64 {
        let state = link.shared.state.lock().unwrap();
        state.channels.iter().map(|c| c.last_tag).sum()
    }

    /// Waits until `count` publishes in all have been sent.
    async fn until_sent(link: &ConfirmLink, count: usize) {
        while sent(link) < count as u64 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn past_the_window_a_publish_waits_for_a_confirm_then_goes_out_in_turn() {
        let link = Arc::new(detached_with_window(1, 2));
        let publishes = publish_many(&link, 3);
        until_sent(&link, 2).await;
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert_eq!(sent(&link), 2, "the third publish waits for a turn");

        link.shared.receive(ack(1, 1, false)).unwrap();
        until_sent(&link, 3).await;
        let newest = link.shared.state.lock().unwrap().channels[0]
            .unconfirmed
            .back()
            .map(|u| u.id);
        assert_eq!(newest, Some(publishes[2].0), "the one that waited went out");

        link.shared.receive(ack(1, 3, true)).unwrap();
        for (_, publish) in publishes {
            assert_eq!(publish.await.unwrap(), Settled::Ack);
        }
    }

    #[tokio::test]
    async fn a_publish_waiting_for_a_turn_is_refused_at_once_when_the_broker_blocks() {
        let link = Arc::new(detached_with_window(1, 1));
        let mut publishes = publish_many(&link, 2);
        until_sent(&link, 1).await;
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        link.shared
            .receive(Incoming::Method(
                0,
                AMQPClass::Connection(connection::AMQPMethod::Blocked(connection::Blocked {
                    reason: "low on memory".into(),
                })),
            ))
            .unwrap();
        // Which of the two went out first is the scheduler's choice.
        let out = link.shared.state.lock().unwrap().channels[0]
            .unconfirmed
            .front()
            .map(|u| u.id);
        let sent = publishes.remove(
            publishes
                .iter()
                .position(|(id, _)| Some(*id) == out)
                .unwrap(),
        );
        let waiting = publishes.pop().unwrap();
        let refused = tokio::time::timeout(Duration::from_secs(5), waiting.1).await;
        assert_eq!(
            refused
                .expect("refused without waiting for a confirm")
                .unwrap(),
            Settled::Blocked
        );
        link.shared.receive(ack(1, 1, false)).unwrap();
        assert_eq!(sent.1.await.unwrap(), Settled::Ack);
    }

    #[tokio::test]
    async fn acks_single_and_multiple_settle_the_publishes_they_name() {
        let link = Arc::new(detached(2));
        let publishes = publish_many(&link, 6);
        until_sent(&link, 6).await;
        // Channel 1 carried publishes 0, 2, 4 (tags 1, 2, 3); channel 2 the rest.
        link.shared.receive(ack(1, 2, true)).unwrap();
        link.shared.receive(ack(2, 2, false)).unwrap();
        link.shared
            .receive(basic(
                2,
                basic::AMQPMethod::Nack(basic::Nack {
                    delivery_tag: 1,
                    multiple: false,
                    requeue: false,
                }),
            ))
            .unwrap();
        link.shared.receive(ack(1, 3, false)).unwrap();
        link.shared.receive(ack(2, 3, true)).unwrap();
        let mut settled = Vec::new();
        for (_, publish) in publishes {
            settled.push(publish.await.unwrap());
        }
        use Settled::{Ack, Nack};
        assert_eq!(settled, [Ack, Nack, Ack, Ack, Ack, Ack]);
    }

    #[tokio::test]
    async fn a_returned_message_settles_as_returned_when_its_ack_comes() {
        let link = Arc::new(detached(1));
        let mut publishes = publish_many(&link, 2);
        until_sent(&link, 2).await;
        let returned_id = publishes[1].0;
        link.shared
            .receive(basic(
                1,
                basic::AMQPMethod::Return(basic::Return {
                    reply_code: 312,
                    reply_text: "NO_ROUTE".into(),
                    exchange: "svc.data".into(),
                    routing_key: "data.ingest".into(),
                }),
            ))
            .unwrap();
        link.shared
            .receive(Incoming::Header {
                channel: 1,
                message_id: Some(returned_id.to_string()),
            })
            .unwrap();
        link.shared.receive(Incoming::Body).unwrap();
        link.shared.receive(ack(1, 2, true)).unwrap();
        let second = publishes.pop().unwrap().1.await.unwrap();
        let first = publishes.pop().unwrap().1.await.unwrap();
        assert_eq!((first, second), (Settled::Ack, Settled::Returned));
    }

    #[tokio::test]
    async fn a_blocked_broker_refuses_publishes_at_once_until_unblocked() {
        let link = detached(1);
        let connection = |method| Incoming::Method(0, AMQPClass::Connection(method));
        link.shared
            .receive(connection(connection::AMQPMethod::Blocked(
                connection::Blocked {
                    reason: "low on memory".into(),
                },
            )))
            .unwrap();
        assert_eq!(link.publish(Uuid::now_v7(), b"{}").await, Settled::Blocked);
        assert!(
            link.shared.state.lock().unwrap().out.is_empty(),
            "nothing was sent"
        );
        link.shared
            .receive(connection(connection::AMQPMethod::Unblocked(
                connection::Unblocked {},
            )))
            .unwrap();
        let link = Arc::new(link);
        let publishes = publish_many(&link, 1);
        until_sent(&link, 1).await;
        link.shared.receive(ack(1, 1, false)).unwrap();
        for (_, publish) in publishes {
            assert_eq!(publish.await.unwrap(), Settled::Ack);
        }
    }

    #[tokio::test]
    async fn a_closed_channel_loses_the_link_and_every_publish_awaiting_its_confirm() {
        let link = Arc::new(detached(2));
        let publishes = publish_many(&link, 3);
        until_sent(&link, 3).await;
        let closed = link.shared.receive(Incoming::Method(
            2,
            AMQPClass::Channel(channel::AMQPMethod::Close(channel::Close {
                reply_code: 404,
                reply_text: "NOT_FOUND - no exchange".into(),
                class_id: 60,
                method_id: 40,
            })),
        ));
        let (reason, close_ok) = closed.unwrap_err();
        assert_eq!(
            &*reason,
            "the broker closed channel 2: 404 NOT_FOUND - no exchange"
        );
        link.shared.lose(reason, &close_ok);
        assert!(!link.is_up());
        for (_, publish) in publishes {
            assert!(matches!(publish.await.unwrap(), Settled::Lost(_)));
        }
        assert!(matches!(
            link.publish(Uuid::now_v7(), b"{}").await,
            Settled::Lost(_)
        ));
        // The broker is answered: channel.close-ok is the last thing sent.
        let out = link.shared.state.lock().unwrap().out.clone();
        assert!(out.ends_with(&close_ok), "close-ok not sent");
    }

    #[tokio::test]
    async fn publishes_whose_callers_gave_up_are_forgotten() {
        let link = Arc::new(detached(1));
        let gave_up = publish_many(&link, 3);
        until_sent(&link, 3).await;
        for (_, publish) in &gave_up {
            publish.abort();
        }
        for (_, publish) in gave_up {
            let _ = publish.await;
        }
        let waiting = publish_many(&link, 1);
        until_sent(&link, 4).await;
        assert_eq!(
            link.shared.state.lock().unwrap().channels[0]
                .unconfirmed
                .len(),
            1
        );
        link.shared.receive(ack(1, 4, false)).unwrap();
        assert_eq!(
            waiting.into_iter().next().unwrap().1.await.unwrap(),
            Settled::Ack
        );
    }

    #[test]
    fn a_refusal_names_what_the_broker_closed() {
        let connection_close =
            AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
                reply_code: 403,
                reply_text: "ACCESS_REFUSED - login refused".into(),
                class_id: 0,
                method_id: 0,
            }));
        let channel_close = AMQPClass::Channel(channel::AMQPMethod::Close(channel::Close {
            reply_code: 406,
            reply_text: "PRECONDITION_FAILED - confirm.select refused".into(),
            class_id: 85,
            method_id: 10,
        }));
        assert_eq!(
            refusal(0, &connection_close).unwrap().to_string(),
            "the broker closed the connection: 403 ACCESS_REFUSED - login refused"
        );
        assert_eq!(
            refusal(2, &channel_close).unwrap().to_string(),
            "the broker closed channel 2: 406 PRECONDITION_FAILED - confirm.select refused"
        );
        let ack = AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
            delivery_tag: 1,
            multiple: false,
        }));
        assert!(refusal(1, &ack).is_none());
    }

    #[test]
    fn a_limit_of_zero_means_none() {
        assert_eq!(lower_limit(0u16, 0), 0);
        assert_eq!(lower_limit(0u16, 7), 7);
        assert_eq!(lower_limit(2047u16, 0), 2047);
        assert_eq!(lower_limit(131_072u32, 4096), 4096);
    }
}
