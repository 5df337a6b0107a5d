//! A client becoming a reader of group logs: its mark, and a window from the next entry of each
//! log of a group hosted here that it is in.

use super::tables::{group_logs, groups};
use super::{Store, StoreError};
use crate::protocol::ClientId;

impl Store {
    /// Makes a client a reader of group logs: from the next entry of each group hosted here that
    /// it is in. Returns `false` if it was one already.
    pub async fn use_group_logs(&self, client: &ClientId) -> Result<bool, StoreError> {
        self.write_for(client, move |txn, (user_id, device_id)| {
            if !group_logs::mark_log_client_in(txn, user_id, device_id)? {
                return Ok(false);
            }
            for group_id in groups::hosted_groups_of_in(txn, user_id, device_id)? {
                group_logs::open_window_at_next(txn, &group_id, user_id, device_id)?;
            }
            Ok(true)
        })
        .await
    }
}
