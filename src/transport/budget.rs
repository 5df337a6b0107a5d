//! Memory budgets of the transport: the bytes of requests still arriving and of responses their
//! peer has not taken yet, per connection and for the whole server.
//!
//! QUIC flow control bounds what quinn itself buffers, but a request read into memory frees its
//! flow-control credit, and an encoded response waits in memory until the peer reads it. Without
//! a budget, a few connections that send 64 requests of almost 1 MiB each and never finish them,
//! or that ask for large responses and never read them, pin hundreds of MiB. Every such byte is
//! reserved here first: a connection over its own budget waits (its own requests slow down), and
//! the server-wide budget caps the sum, so one source cannot take the memory others need.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Bytes of incomplete requests one connection may hold (several large requests in flight).
pub const CONNECTION_REQUEST_BUDGET: usize = 4 * 1024 * 1024;
/// Bytes of unsent responses one connection may hold (two responses of the largest size).
pub const CONNECTION_RESPONSE_BUDGET: usize = 2 * crate::protocol::MAX_RESPONSE_LEN;
/// Bytes of incomplete requests the whole server holds at most.
pub const SERVER_REQUEST_BUDGET: usize = 256 * 1024 * 1024;
/// Bytes of unsent responses the whole server holds at most.
pub const SERVER_RESPONSE_BUDGET: usize = 256 * 1024 * 1024;

/// The server-wide budgets, shared by every connection.
pub struct ServerBudget {
    requests: Arc<Semaphore>,
    responses: Arc<Semaphore>,
}

impl Default for ServerBudget {
    fn default() -> Self {
        Self {
            requests: Arc::new(Semaphore::new(SERVER_REQUEST_BUDGET)),
            responses: Arc::new(Semaphore::new(SERVER_RESPONSE_BUDGET)),
        }
    }
}

impl ServerBudget {
    /// The budgets of a new connection, drawing on these.
    pub fn connection(&self) -> ConnectionBudget {
        ConnectionBudget {
            requests: Pool::new(CONNECTION_REQUEST_BUDGET, self.requests.clone()),
            responses: Pool::new(CONNECTION_RESPONSE_BUDGET, self.responses.clone()),
        }
    }

    /// Bytes of incomplete requests held now, server-wide.
    #[cfg(test)]
    fn request_bytes_held(&self) -> usize {
        SERVER_REQUEST_BUDGET - self.requests.available_permits()
    }
}

/// One connection's budgets.
pub struct ConnectionBudget {
    pub requests: Pool,
    pub responses: Pool,
}

/// A connection's own budget of one kind, and the server-wide one it also draws on.
pub struct Pool {
    own: Arc<Semaphore>,
    capacity: usize,
    shared: Arc<Semaphore>,
}

impl Pool {
    fn new(capacity: usize, shared: Arc<Semaphore>) -> Self {
        Self {
            own: Arc::new(Semaphore::new(capacity)),
            capacity,
            shared,
        }
    }

    /// Reserves `bytes` (at most the connection's whole budget), waiting until both the
    /// connection's and the server's budgets have room. Released when the reservation drops.
    pub async fn reserve(&self, bytes: usize) -> Reservation {
        let len = bytes.min(self.capacity);
        let permits = u32::try_from(len).unwrap_or(u32::MAX);
        // The connection's own budget first: a connection that holds much waits on itself
        // without holding any of the shared budget meanwhile. The semaphores are never closed.
        let own = self.own.clone().acquire_many_owned(permits).await.ok();
        let shared = self.shared.clone().acquire_many_owned(permits).await.ok();
        Reservation {
            len,
            _own: own,
            _shared: shared,
        }
    }

    /// Reserves `bytes` of the server-wide budget only: for the first bytes of every request,
    /// which a connection may have in flight on all its streams at once (so that its own
    /// budget, kept for large requests, is never taken piecemeal by many streams that then wait
    /// on each other).
    pub async fn reserve_shared(&self, bytes: usize) -> Reservation {
        let permits = u32::try_from(bytes).unwrap_or(u32::MAX);
        let shared = self.shared.clone().acquire_many_owned(permits).await.ok();
        Reservation {
            len: bytes,
            _own: None,
            _shared: shared,
        }
    }
}

/// Bytes held against a connection's and the server's budget until dropped.
#[must_use = "the bytes are released when the reservation drops"]
pub struct Reservation {
    len: usize,
    _own: Option<OwnedSemaphorePermit>,
    _shared: Option<OwnedSemaphorePermit>,
}

impl Reservation {
    /// How many bytes are reserved.
    pub fn bytes(&self) -> usize {
        self.len
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_connection_waits_on_its_own_budget_and_releases_on_drop() {
        let server = ServerBudget::default();
        let connection = server.connection();
        let held = connection.requests.reserve(CONNECTION_REQUEST_BUDGET).await;
        assert_eq!(server.request_bytes_held(), CONNECTION_REQUEST_BUDGET);
        let more =
            tokio::time::timeout(Duration::from_millis(20), connection.requests.reserve(1)).await;
        assert!(more.is_err(), "over its own budget, a connection waits");
        // Another connection is not held up by the first one's budget.
        let other = server.connection();
        let _theirs = tokio::time::timeout(Duration::from_secs(1), other.requests.reserve(1024))
            .await
            .expect("another connection has room");
        drop(held);
        assert_eq!(server.request_bytes_held(), 1024);
    }
}
