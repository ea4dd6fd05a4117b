//! The reliable layer as a tokio task over any frame transport.
//!
//! The transport is a `Stream` of received payload maps and a `Sink` of maps
//! to send, e.g. SerialPacker framing plus MsgPack over a UART. The task
//! owns a [`Machine`], feeds it frames, time (`tokio::time`, so a paused
//! test clock drives it deterministically) and the messages given to
//! [`LinkHandle::send`], and hands out [`Event`]s: delivered messages and
//! link state changes. It starts the reset handshake as soon as it runs.

use std::fmt;

use futures::{Sink, SinkExt, Stream, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant as TokioInstant;

use super::machine::{Config, ConfigError, Event, Machine, Stats};
use crate::value::Value;

/// Messages the handle may queue before `send` waits for the link.
const SEND_QUEUE: usize = 16;
/// Events buffered before the task waits for the receiver.
const EVENT_QUEUE: usize = 64;

/// What a running link reports. Same as the machine's events.
pub type LinkEvent = Event;

/// Why the link task stopped or a handle call failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkError {
    /// The link task has ended (transport closed or failed); make a new link.
    Stopped,
    /// Writing to the transport failed.
    Transport(String),
}

impl fmt::Display for LinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkError::Stopped => f.write_str(
                "reliable link task has stopped (transport closed); open the link again",
            ),
            LinkError::Transport(e) => write!(f, "reliable link transport failed: {e}"),
        }
    }
}

impl std::error::Error for LinkError {}

enum Control {
    Connect,
    Close(String),
    Stats(oneshot::Sender<Stats>),
}

/// Sends messages over a running link and steers it. Cheap to clone; the
/// link closes (sending a closing frame) when the last handle is dropped.
#[derive(Clone, Debug)]
pub struct LinkHandle {
    msgs: mpsc::Sender<Value>,
    ctl: mpsc::UnboundedSender<Control>,
}

impl fmt::Debug for Control {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Control::Connect => f.write_str("Connect"),
            Control::Close(r) => write!(f, "Close({r:?})"),
            Control::Stats(_) => f.write_str("Stats"),
        }
    }
}

impl LinkHandle {
    /// Queues a message; waits while the link's queue is full. While the
    /// link is down the message is refused and counted in
    /// [`Stats::refused`] (watch the events: [`Event::Down`]).
    pub async fn send(&self, msg: Value) -> Result<(), LinkError> {
        self.msgs.send(msg).await.map_err(|_| LinkError::Stopped)
    }

    /// Starts the reset handshake again (after `Down`, or to reset).
    pub fn connect(&self) -> Result<(), LinkError> {
        self.control(Control::Connect)
    }

    /// Sends a closing frame and takes the link down.
    pub fn close(&self, reason: &str) -> Result<(), LinkError> {
        self.control(Control::Close(reason.to_owned()))
    }

    /// The machine's counters so far.
    pub async fn stats(&self) -> Result<Stats, LinkError> {
        let (tx, rx) = oneshot::channel();
        self.control(Control::Stats(tx))?;
        rx.await.map_err(|_| LinkError::Stopped)
    }

    fn control(&self, c: Control) -> Result<(), LinkError> {
        self.ctl.send(c).map_err(|_| LinkError::Stopped)
    }
}

/// The link's task, not yet running: `run` it (or use [`spawn`]).
pub struct LinkTask<T> {
    machine: Machine,
    transport: T,
    msgs: mpsc::Receiver<Value>,
    ctl: mpsc::UnboundedReceiver<Control>,
    events: mpsc::Sender<Event>,
}

/// Builds a link over `transport`: the handle, the event receiver and the
/// task to run.
pub fn new<T>(
    transport: T,
    config: Config,
) -> Result<(LinkHandle, mpsc::Receiver<Event>, LinkTask<T>), ConfigError> {
    let machine = Machine::new(config)?;
    let (msg_tx, msg_rx) = mpsc::channel(SEND_QUEUE);
    let (ctl_tx, ctl_rx) = mpsc::unbounded_channel();
    let (ev_tx, ev_rx) = mpsc::channel(EVENT_QUEUE);
    let handle = LinkHandle {
        msgs: msg_tx,
        ctl: ctl_tx,
    };
    let task = LinkTask {
        machine,
        transport,
        msgs: msg_rx,
        ctl: ctl_rx,
        events: ev_tx,
    };
    Ok((handle, ev_rx, task))
}

/// [`new`], then runs the task on the current tokio runtime.
#[allow(clippy::type_complexity)]
pub fn spawn<T, E>(
    transport: T,
    config: Config,
) -> Result<
    (
        LinkHandle,
        mpsc::Receiver<Event>,
        JoinHandle<Result<Stats, LinkError>>,
    ),
    ConfigError,
>
where
    T: Stream<Item = Result<Value, E>> + Sink<Value> + Send + 'static,
    E: fmt::Display + Send + 'static,
    <T as Sink<Value>>::Error: fmt::Display + Send + 'static,
{
    let (handle, events, task) = new(transport, config)?;
    Ok((handle, events, tokio::spawn(task.run())))
}

fn now() -> std::time::Instant {
    TokioInstant::now().into_std()
}

impl<T, E> LinkTask<T>
where
    T: Stream<Item = Result<Value, E>> + Sink<Value>,
    E: fmt::Display,
    <T as Sink<Value>>::Error: fmt::Display,
{
    /// Runs until the transport ends or fails, or every handle is dropped.
    /// Returns the final counters.
    pub async fn run(self) -> Result<Stats, LinkError> {
        let LinkTask {
            mut machine,
            transport,
            mut msgs,
            mut ctl,
            events,
        } = self;
        let mut transport = Box::pin(transport);
        let mut ctl_open = true;
        machine.connect(now());
        loop {
            let wrote = flush_frames(&mut machine, &mut transport).await;
            forward_events(&mut machine, &events).await;
            if let Err(e) = wrote {
                machine.close(&e.to_string());
                forward_events(&mut machine, &events).await;
                return Err(e);
            }
            let deadline = machine.poll_timeout();
            // Backpressure: take new messages only while the window could
            // use them soon.
            let room = machine.queued() < machine.max_in_flight();
            tokio::select! {
                biased;
                c = ctl.recv(), if ctl_open => match c {
                    Some(Control::Connect) => machine.connect(now()),
                    Some(Control::Close(reason)) => machine.close(&reason),
                    Some(Control::Stats(tx)) => {
                        let _ = tx.send(*machine.stats());
                    }
                    None => ctl_open = false,
                },
                // Due timers first: a busy transport must not starve them.
                _ = sleep_until(deadline), if deadline.is_some() => {
                    machine.handle_timeout(now());
                }
                f = transport.next() => match f {
                    Some(Ok(v)) => machine.handle_value(&v, now()),
                    Some(Err(e)) => {
                        tracing::debug!("reliable: transport dropped a frame: {e}");
                        machine.count_bad_frame();
                    }
                    None => {
                        machine.close("transport closed");
                        forward_events(&mut machine, &events).await;
                        return Ok(*machine.stats());
                    }
                },
                m = msgs.recv(), if room => match m {
                    Some(v) => {
                        let _ = machine.send(v, now());
                    }
                    None => {
                        machine.close("link handle dropped");
                        let _ = flush_frames(&mut machine, &mut transport).await;
                        forward_events(&mut machine, &events).await;
                        return Ok(*machine.stats());
                    }
                },
            }
        }
    }
}

async fn sleep_until(deadline: Option<std::time::Instant>) {
    if let Some(d) = deadline {
        tokio::time::sleep_until(TokioInstant::from_std(d)).await;
    }
}

async fn flush_frames<T>(
    machine: &mut Machine,
    transport: &mut std::pin::Pin<Box<T>>,
) -> Result<(), LinkError>
where
    T: Sink<Value>,
    <T as Sink<Value>>::Error: fmt::Display,
{
    let mut any = false;
    while let Some(f) = machine.poll_transmit() {
        any = true;
        transport
            .feed(f.to_value())
            .await
            .map_err(|e| LinkError::Transport(e.to_string()))?;
    }
    if any {
        transport
            .flush()
            .await
            .map_err(|e| LinkError::Transport(e.to_string()))?;
    }
    Ok(())
}

async fn forward_events(machine: &mut Machine, events: &mpsc::Sender<Event>) {
    while let Some(ev) = machine.poll_event() {
        // Nobody listening is not an error: the link still serves senders.
        let _ = events.send(ev).await;
    }
}
