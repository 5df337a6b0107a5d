//! What the outbox's drainer writes once a peer has answered: the deliveries it acknowledged go,
//! under the drainer's lease (its fence) on a shared store.

use super::tables::{federation, leases};
use super::{LeaseFence, Store, StoreError};

impl Store {
    /// Removes deliveries the peer acknowledged (or refused for good), in one commit. With a
    /// `fence` (on a shared store, the drainer's outbox lease), only while the lease is still
    /// the drainer's at `now_ms`: returns whether they were removed.
    pub async fn outbox_done(
        &self,
        peer: &str,
        seqs: Vec<u64>,
        fence: Option<LeaseFence>,
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        let peer = peer.to_owned();
        self.write(move |txn| {
            if let Some(fence) = &fence {
                if !leases::fence_holds(txn, fence, now_ms)? {
                    return Ok(false);
                }
            }
            federation::outbox_delete_in(txn, &peer, &seqs)?;
            Ok(true)
        })
        .await
    }
}
