//! A group's change, in one transaction: created, moved to its next state by a commit or a
//! proposal (its record, state, members, log readers and send view; the handshake and Welcomes
//! queued or logged for its members, its deliveries in peers' outboxes, the joiners' tree kept,
//! the request remembered), or deleted with everything of it.

use super::fan_out;
use super::kv::WriteTransaction;
use super::rows::{Enqueued, Envelope, GroupMemberRow, OutgoingDelivery, QueueLimits};
use super::tables::groups::{self, GroupRefusal, GroupTransition, StoredGroup};
use super::tables::{accounts, federation, group_logs, group_trees, meta};
use super::{Store, StoreError};

impl Store {
    /// Stores a new group and its members.
    pub async fn create_group(
        &self,
        group_id: &[u8],
        group: StoredGroup,
        members: Vec<GroupMemberRow>,
    ) -> Result<Result<(), GroupRefusal>, StoreError> {
        let group_id = group_id.to_vec();
        let encoded = group.encode()?;
        let epoch = group.epoch;
        let state = group.public_state;
        self.write(move |txn| {
            if !groups::insert_group_in(txn, &group_id, &encoded)? {
                return Ok(Err(GroupRefusal::Exists));
            }
            groups::write_state(txn, &group_id, &state)?;
            groups::replace_members(txn, &group_id, &[], &members, epoch)?;
            group_logs::update_windows(txn, &group_id, &[], &members)?;
            groups::write_send_view(txn, &group_id, epoch, &members)?;
            Ok(Ok(()))
        })
        .await
    }

    /// Moves a group to its new state, replaces its member rows and queues the transition's
    /// envelopes, all in one commit. Refused if the group is no longer at `from_epoch`.
    pub async fn commit_group(
        &self,
        group_id: &[u8],
        mut transition: GroupTransition,
        now_ms: u64,
        limits: QueueLimits,
    ) -> Result<Result<Vec<Enqueued>, GroupRefusal>, StoreError> {
        let group_id = group_id.to_vec();
        let encoded = transition.group.encode()?;
        let new_epoch = transition.group.epoch;
        let state = std::mem::take(&mut transition.group.public_state);
        let GroupTransition {
            from_epoch,
            old_members,
            members,
            envelopes,
            remote,
            request,
            joiners_tree,
            ..
        } = transition;
        self.write(move |txn| {
            if let Some(request) = &request {
                if let Some(refusal) = groups::repeat_refusal(txn, request)? {
                    return Ok(Err(refusal));
                }
            }
            let Some(current) = groups::epoch_in(txn, &group_id)? else {
                return Ok(Err(GroupRefusal::Unknown));
            };
            if current != from_epoch {
                return Ok(Err(GroupRefusal::WrongEpoch { current }));
            }
            if let Some(gone) = gone_joiner(txn, &old_members, &members)? {
                return Ok(Err(gone));
            }
            // Queued first: a refusal must leave nothing written.
            let outcomes =
                match fan_out::enqueue_group_in(txn, &group_id, &envelopes, now_ms, limits)? {
                    Ok(outcomes) => outcomes,
                    Err(full) => return Ok(Err(GroupRefusal::QueueFull(full))),
                };
            groups::put_group_in(txn, &group_id, &encoded)?;
            groups::write_state(txn, &group_id, &state)?;
            groups::replace_members(txn, &group_id, &old_members, &members, new_epoch)?;
            group_logs::update_windows(txn, &group_id, &old_members, &members)?;
            groups::write_send_view(txn, &group_id, new_epoch, &members)?;
            federation::outbox_in(txn, &remote, now_ms)?;
            if let Some(request) = &request {
                groups::remember_request(txn, request)?;
            }
            if let Some(tree) = &joiners_tree {
                group_trees::keep_tree_in(txn, &group_id, new_epoch, now_ms, tree)?;
            }
            Ok(Ok(outcomes))
        })
        .await
    }

    /// Deletes a group and its member rows, and queues `envelopes` (the members' notices), in one
    /// commit.
    pub async fn delete_group(
        &self,
        group_id: &[u8],
        members: Vec<GroupMemberRow>,
        envelopes: Vec<Envelope>,
        remote: Vec<OutgoingDelivery>,
        now_ms: u64,
        limits: QueueLimits,
    ) -> Result<Result<Vec<Enqueued>, GroupRefusal>, StoreError> {
        let group_id = group_id.to_vec();
        self.write(move |txn| {
            if !groups::delete_group_in(txn, &group_id)? {
                return Ok(Err(GroupRefusal::Unknown));
            }
            groups::replace_members(txn, &group_id, &members, &[], 0)?;
            group_logs::delete_log(txn, &group_id)?;
            group_trees::delete_trees_in(txn, &group_id)?;
            // Notices are admitted whatever the queues hold: this enqueue is never refused.
            let outcomes = fan_out::enqueue(txn, &envelopes, now_ms, limits)?.unwrap_or_default();
            federation::outbox_in(txn, &remote, now_ms)?;
            Ok(Ok(outcomes))
        })
        .await
    }
}

/// The first client of this server among the rows `members` adds to `old` that does not exist:
/// a membership is kept only for a client that exists, and a client's removal deletes them all,
/// so a transition checked before a removal must not bring the removed client back.
fn gone_joiner(
    txn: &WriteTransaction,
    old: &[GroupMemberRow],
    members: &[GroupMemberRow],
) -> Result<Option<GroupRefusal>, StoreError> {
    let joiners: Vec<&GroupMemberRow> = members.iter().filter(|row| !old.contains(row)).collect();
    if joiners.is_empty() {
        return Ok(None);
    }
    let Some(domain) = meta::domain_in(txn)? else {
        return Ok(None);
    };
    for row in joiners {
        let local = crate::identity::UserId::domain_of(row.client.user_id.as_str()) == domain;
        if local
            && !accounts::client_exists(txn, row.client.user_id.as_str(), row.client.device_id)?
        {
            return Ok(Some(GroupRefusal::MemberGone(row.client.clone())));
        }
    }
    Ok(None)
}
