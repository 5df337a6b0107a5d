//! Cross-node events over PostgreSQL's `LISTEN`/`NOTIFY`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use postgres::Config;
use tokio::sync::broadcast;

use super::conn::PgConn;
use super::{drop_off_runtime, error};
use crate::store::StoreError;

/// The NOTIFY channel of cross-node events.
const EVENT_CHANNEL: &str = "roost_events";

/// Largest event payload NOTIFY carries (PostgreSQL's limit is 8000 bytes of text; events are
/// sealed, then sent base64-encoded).
const MAX_EVENT_BYTES: usize = crate::protocol::cluster::MAX_SEALED_CLUSTER_EVENT_LEN;

/// Cross-node events over `LISTEN`/`NOTIFY`: a listening thread forwards every notification on
/// `EVENT_CHANNEL` to the subscribers; publishing sends one `NOTIFY` on a connection of its own.
/// A node receives its own events too: events carry their origin so that it can skip them.
pub struct PgEventBus {
    sender: broadcast::Sender<Vec<u8>>,
    publisher: Mutex<Option<PgConn>>,
    config: Config,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

/// Events a slow subscriber may fall behind by before it misses some (it is told it lagged).
const EVENT_BACKLOG: usize = 4096;

impl PgEventBus {
    pub(super) fn start(config: &Config) -> Result<Arc<Self>, StoreError> {
        let (sender, _) = broadcast::channel(EVENT_BACKLOG);
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut listener = PgConn::connect(config)?;
        listener
            .client
            .batch_execute(&format!("LISTEN {EVENT_CHANNEL}"))
            .map_err(error)?;
        let bus = Arc::new(Self {
            sender: sender.clone(),
            publisher: Mutex::new(None),
            config: config.clone(),
            stop: stop.clone(),
        });
        let config = config.clone();
        std::thread::Builder::new()
            .name("roost-event-bus".into())
            .spawn(move || listen(listener, config, sender, stop))
            .map_err(StoreError::io)?;
        Ok(bus)
    }
}

impl crate::store::EventBus for PgEventBus {
    /// Sends `payloads` (each at most `MAX_EVENT_BYTES`), in order, to every node, this one
    /// included. Blocking.
    fn publish(&self, payloads: &[Vec<u8>]) -> Result<(), StoreError> {
        use base64::Engine as _;
        if let Some(payload) = payloads.iter().find(|p| p.len() > MAX_EVENT_BYTES) {
            return Err(StoreError::Corrupt(format!(
                "an event of {} bytes (at most {MAX_EVENT_BYTES})",
                payload.len()
            )));
        }
        let texts: Vec<String> = payloads
            .iter()
            .map(|payload| base64::engine::general_purpose::STANDARD_NO_PAD.encode(payload))
            .collect();
        let mut publisher = self
            .publisher
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for attempt in 0..2 {
            let mut conn = PgConn::reuse_or_connect(publisher.take(), &self.config)?;
            // One round trip for all of them; one statement's notifications arrive in order.
            match conn.client.execute(
                "SELECT pg_notify($1, event) FROM unnest($2::text[]) WITH ORDINALITY AS e(event, n) ORDER BY n",
                &[&EVENT_CHANNEL, &texts],
            ) {
                Ok(_) => {
                    *publisher = Some(conn);
                    return Ok(());
                }
                Err(e) if attempt == 0 && conn.is_closed() => {
                    tracing::debug!(error = %e, "the event connection closed; reconnecting");
                }
                Err(e) => return Err(error(e)),
            }
        }
        unreachable!("the second attempt returns")
    }

    /// Every event published from now on.
    fn subscribe(&self) -> broadcast::Receiver<Vec<u8>> {
        self.sender.subscribe()
    }
}

impl Drop for PgEventBus {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let publisher = self
            .publisher
            .get_mut()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        drop_off_runtime(publisher.into_iter().collect());
    }
}

/// The listening thread: forwards notifications until the bus is dropped, reconnecting (and
/// listening again) when the connection is lost.
fn listen(
    mut conn: PgConn,
    config: Config,
    sender: broadcast::Sender<Vec<u8>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    use base64::Engine as _;
    use postgres::fallible_iterator::FallibleIterator as _;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        {
            let mut notifications = conn.client.notifications();
            let mut batch = notifications.timeout_iter(Duration::from_millis(250));
            loop {
                match batch.next() {
                    Ok(Some(notification)) => {
                        // What is not base64 goes on empty: the services refuse (and count) it
                        // with every other event no node of the domain sealed.
                        let payload = base64::engine::general_purpose::STANDARD_NO_PAD
                            .decode(notification.payload())
                            .unwrap_or_default();
                        let _ = sender.send(payload);
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "the event bus lost its connection");
                        break;
                    }
                }
            }
        }
        if conn.is_closed() {
            // Events sent while no connection listened are lost. They are hints: what they
            // announced is in the store, and a client finds it at its next fetch or hint.
            loop {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    return;
                }
                match PgConn::connect(&config).and_then(|mut fresh| {
                    fresh
                        .client
                        .batch_execute(&format!("LISTEN {EVENT_CHANNEL}"))
                        .map_err(error)?;
                    Ok(fresh)
                }) {
                    Ok(fresh) => {
                        conn = fresh;
                        break;
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(500)),
                }
            }
        }
    }
}
