//! Joining a group by external commit (RFC 9420 section 12.4.3.2), from the GroupInfo and tree the
//! hub keeps: how a user's new device enters the groups its user is in, and how a device that
//! lost its state for a group (or fell hopelessly behind) rejoins it. The hub allows it only for a
//! client whose user is in the group (protocol-spec/groups.md, "Joining by external commit").

use anyhow::{anyhow, Context};
use openmls::prelude::{
    LeafNodeParameters, MlsGroup, MlsMessageBodyIn, MlsMessageIn, RatchetTreeIn,
};
use openmls_traits::OpenMlsProvider;
use tls_codec::{Deserialize, Serialize};

use super::groups::{is_behind, GroupClient};
use super::local_error::LocalError;
use crate::protocol::SendCommitRequest;

/// What [`GroupClient::join_user_groups`] did.
#[derive(Debug)]
pub struct JoinedGroups {
    /// Each group of the user this device was not in: the epoch it joined at, or why not.
    pub groups: Vec<(Vec<u8>, anyhow::Result<u64>)>,
    /// Hubs that could not be asked for the user's groups: their groups wait for the next call.
    pub unreachable_hubs: Vec<String>,
}

/// Attempts at an external join when another commit comes first each time.
const JOIN_ATTEMPTS: usize = 4;

impl GroupClient<'_> {
    /// Joins, by external commit, every group the user is in (through any of its devices) that
    /// this device holds no state for: a new device's first step. Returns the groups joined; a
    /// group that could not be joined now (its hub unreachable, proposals pending there) is
    /// left for the next call and does not stop the others.
    pub async fn join_user_groups(&self) -> anyhow::Result<JoinedGroups> {
        let listed = self.connection.list_user_groups().await?;
        let mut groups = Vec::new();
        for group in listed.groups {
            let group_id = group.group_id.as_slice().to_vec();
            if self.mls.group(&group_id)?.is_some() {
                continue;
            }
            let outcome = self.join_externally(&group_id).await;
            groups.push((group_id, outcome));
        }
        Ok(JoinedGroups {
            groups,
            unreachable_hubs: listed
                .unreachable_hubs
                .iter()
                .map(ToString::to_string)
                .collect(),
        })
    }

    /// Rejoins `group_id` by external commit in place of this device's own leaf: for a device
    /// whose state for the group is lost or unusable. The other members see one commit; roles
    /// (the user's) are unchanged. Returns the new epoch.
    pub async fn resync(&self, group_id: &[u8]) -> anyhow::Result<u64> {
        self.forget(group_id)?;
        self.join_externally(group_id).await
    }

    /// One external join of `group_id`, tried again on the new state if another commit came
    /// first.
    async fn join_externally(&self, group_id: &[u8]) -> anyhow::Result<u64> {
        let mut attempt = 1;
        loop {
            match self.join_externally_once(group_id).await {
                // Another commit came first (the next GetGroup has it), or proposals wait that
                // a member's next commit clears: a pause, growing, then again.
                Err(e) if is_behind(&e) && attempt < JOIN_ATTEMPTS => {
                    tokio::time::sleep(std::time::Duration::from_millis(
                        100 * 4u64.pow(attempt as u32 - 1),
                    ))
                    .await;
                    attempt += 1;
                }
                outcome => return outcome,
            }
        }
    }

    async fn join_externally_once(&self, group_id: &[u8]) -> anyhow::Result<u64> {
        let state = self.connection.get_group(group_id).await?;
        let tree = if state.ratchet_tree.as_slice().is_empty() {
            self.connection
                .fetch_group_tree(group_id, state.epoch)
                .await?
        } else {
            state.ratchet_tree.as_slice().to_vec()
        };
        let MlsMessageBodyIn::GroupInfo(group_info) =
            MlsMessageIn::tls_deserialize_exact(state.group_info.as_slice())
                .context("the group's GroupInfo does not parse")?
                .extract()
        else {
            return Err(anyhow!("the hub's GroupInfo is not a GroupInfo"));
        };
        let tree = RatchetTreeIn::tls_deserialize_exact(tree.as_slice())
            .context("the group's ratchet tree does not parse")?;
        let mls = |detail: String| LocalError::Mls { detail };
        let provider = self.mls.provider();
        let (mut group, bundle) = MlsGroup::external_commit_builder()
            .with_ratchet_tree(tree)
            .with_config(self.mls.join_config())
            .build_group(provider, group_info, self.mls.credential().clone())
            .map_err(|e| mls(format!("joining from the GroupInfo: {e}")))?
            .leaf_node_parameters(
                LeafNodeParameters::builder()
                    .with_capabilities(self.mls.capabilities())
                    .build(),
            )
            .load_psks(provider.storage())
            .map_err(|e| mls(format!("building the external commit: {e}")))?
            // The hub checks every commit against the GroupInfo of the epoch it creates.
            .create_group_info(true)
            .build(
                provider.rand(),
                provider.crypto(),
                self.mls.signer(),
                |_| true,
            )
            .map_err(|e| mls(format!("building the external commit: {e}")))?
            .finalize(provider)
            .map_err(|e| mls(format!("finishing the external commit: {e}")))?;
        // The members are checked as on any join, before the commit makes this device one.
        let joining = super::groups::Trusted::Nobody;
        if let Err(e) = self.verify_members_logged(&group, &joining).await {
            self.forget(group_id)?;
            return Err(e);
        }
        let (commit, _, group_info) = bundle.into_messages();
        let request = SendCommitRequest {
            commit: commit.tls_serialize_detached()?.into(),
            welcome: None,
            group_info: group_info
                .context("openmls produced no GroupInfo for the external commit")?
                .tls_serialize_detached()?
                .into(),
        };
        let sent = super::with_retries(|| self.connection.send_commit(request.clone())).await;
        if let Err(e) = sent {
            // The group state openmls made is of an epoch the hub refused: it goes.
            group
                .delete(provider.storage())
                .map_err(|e| anyhow!("discarding the refused join: {e}"))?;
            return Err(e.into());
        }
        Ok(group.epoch().as_u64())
    }
}
