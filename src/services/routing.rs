//! Routing between homeservers: what a peer asks of this server, and a client's request that
//! another homeserver answers (a remote user's lookup, claim or keys; a group hosted elsewhere,
//! relayed to its hub; the groups every hub holds for a client; departures told to hubs).

use crate::protocol::{
    ClaimKeyPackagesRequest, ClaimedKeyPackages, ClientId, ClientsDepartedRequest, DeliveredBatch,
    DomainKeysBody, FederatedClaimRequest, FederationRequest, FederationResponseBody, GroupList,
    GroupRequest, LookupUserRequest, Operation, RelayedGroupRequest, ResponseBody, Text,
    UserClients, MAX_DELIVERIES_PER_BATCH,
};
use crate::store::StoreError;

use super::{wire_error, ServiceError, Services};

impl Services {
    /// Removes one of `caller`'s user's clients, then, as the server, proposes its removal from
    /// its groups (here and at the hubs that welcomed it): that goes on even if the caller
    /// removed itself.
    pub(super) async fn remove_client(
        &self,
        caller: &ClientId,
        removed: &ClientId,
    ) -> Result<ResponseBody, ServiceError> {
        let groups = self.groups.memberships(removed).await?;
        let hubs = self.hubs_of(std::slice::from_ref(removed)).await;
        self.accounts.remove_client(caller, removed).await?;
        crate::store::acting_for(None, async {
            self.groups.remove_departed(removed, &groups).await;
            self.tell_hubs_of_departures(hubs, vec![removed.clone()])
                .await;
        })
        .await;
        Ok(ResponseBody::ClientRemoved)
    }

    /// A user's clients: ours from the store, another homeserver's from it.
    pub(super) async fn lookup_user(
        &self,
        _caller: &ClientId,
        request: LookupUserRequest,
    ) -> Result<UserClients, ServiceError> {
        match self.remote_user(request.user_id.as_str())? {
            None => self.accounts.lookup(request.user_id.as_str()).await,
            Some(domain) => match self
                .federated(&domain, FederationRequest::LookupUser(request))
                .await?
            {
                FederationResponseBody::UserFound(found) => Ok(found),
                other => Err(unexpected_peer_answer(&other)),
            },
        }
    }

    /// The credential keys of `domain`: ours, or those its homeserver publishes (which must be
    /// for the domain asked).
    pub(super) async fn domain_keys(
        &self,
        _caller: &ClientId,
        domain: &Text,
    ) -> Result<DomainKeysBody, ServiceError> {
        let domain = domain.as_str().to_ascii_lowercase();
        if domain == self.domain.as_str() {
            return Ok(self.own_domain_keys());
        }
        match self
            .federated(&domain, FederationRequest::GetDomainKeys)
            .await?
        {
            FederationResponseBody::DomainKeys(keys) if keys.domain.as_str() == domain => Ok(keys),
            other => Err(unexpected_peer_answer(&other)),
        }
    }

    /// One KeyPackage per client of a user: claimed here, or relayed to the user's homeserver
    /// with the claimer named.
    pub(super) async fn claim_key_packages(
        &self,
        caller: &ClientId,
        request: ClaimKeyPackagesRequest,
    ) -> Result<ClaimedKeyPackages, ServiceError> {
        let Some(domain) = self.remote_user(request.user_id.as_str())? else {
            return self.key_packages.claim(caller, request).await;
        };
        let relayed = FederationRequest::ClaimKeyPackages(FederatedClaimRequest {
            claimer: caller.clone(),
            request,
        });
        match self.federated(&domain, relayed).await? {
            FederationResponseBody::KeyPackagesClaimed(claimed) => Ok(claimed),
            other => Err(unexpected_peer_answer(&other)),
        }
    }

    /// Handles a request from the peer homeserver of `peer` (already identified).
    pub async fn handle_federation(
        &self,
        peer: &str,
        request: FederationRequest,
    ) -> Result<FederationResponseBody, ServiceError> {
        Ok(match request {
            FederationRequest::GetDomainKeys => {
                FederationResponseBody::DomainKeys(self.own_domain_keys())
            }
            FederationRequest::LookupUser(request) => {
                if self.remote_user(request.user_id.as_str())?.is_some() {
                    return Err(ServiceError::UnknownDomain(request.user_id.to_string()));
                }
                FederationResponseBody::UserFound(
                    self.accounts.lookup(request.user_id.as_str()).await?,
                )
            }
            FederationRequest::ClaimKeyPackages(claim) => {
                // A peer speaks only for its own users.
                check_peer_speaks_for(peer, &claim.claimer)?;
                if self.remote_user(claim.request.user_id.as_str())?.is_some() {
                    return Err(ServiceError::UnknownDomain(
                        claim.request.user_id.to_string(),
                    ));
                }
                FederationResponseBody::KeyPackagesClaimed(
                    self.key_packages
                        .claim(&claim.claimer, claim.request)
                        .await?,
                )
            }
            FederationRequest::Deliver(delivery) => {
                let (_, refusal) = self
                    .queues
                    .receive_deliveries(peer, self.domain.as_str(), vec![delivery])
                    .await?;
                if let Some(refusal) = refusal {
                    return Err(refusal);
                }
                FederationResponseBody::Delivered
            }
            FederationRequest::DeliverBatch(batch) => {
                if batch.deliveries.len() > MAX_DELIVERIES_PER_BATCH {
                    return Err(ServiceError::PeerRefused(format!(
                        "a batch carries at most {MAX_DELIVERIES_PER_BATCH} deliveries"
                    )));
                }
                let (accepted, refusal) = self
                    .queues
                    .receive_deliveries(peer, self.domain.as_str(), batch.deliveries)
                    .await?;
                FederationResponseBody::DeliveredBatch(DeliveredBatch {
                    accepted: accepted as u32,
                    refusal: refusal.map(wire_error),
                })
            }
            FederationRequest::RelayGroupRequest(relayed) => {
                let sender = &relayed.sender;
                check_peer_speaks_for(peer, sender)?;
                FederationResponseBody::GroupResponse(
                    self.group_request(sender, relayed.request).await?,
                )
            }
            FederationRequest::ClientsDeparted(departed) => {
                for client in &departed.clients {
                    check_peer_speaks_for(peer, client)?;
                }
                for client in &departed.clients {
                    let groups = self.groups.memberships(client).await?;
                    self.groups.remove_departed(client, &groups).await;
                }
                FederationResponseBody::DeparturesNoted
            }
            FederationRequest::Transparency(query) => self.peer_transparency_query(query).await?,
            FederationRequest::Identify(_) => {
                return Err(ServiceError::NotAServiceOperation(Operation::Authenticate))
            }
        })
    }

    /// A group operation of `caller`: handled here if this server hosts the group, relayed to
    /// the group's hub if it is hosted elsewhere.
    pub(super) async fn routed_group_request(
        &self,
        caller: &ClientId,
        request: GroupRequest,
    ) -> Result<ResponseBody, ServiceError> {
        if let Some(group_id) = request_group_id(&request) {
            // The group id names its hub: a group naming another one is relayed there (unless
            // it is hosted here all the same); one naming this server, or none, is answered
            // below (`UnknownGroup` if there is no such group). Only the rare other case reads
            // the store, and then without decoding the group.
            let hub = crate::identity::group_hub(&group_id)
                .filter(|hub| hub.as_str() != self.domain.as_str());
            if hub.is_some() && !self.groups.hosts(&group_id).await? {
                if let Some(hub) = hub {
                    // The caller may have been removed since it authenticated; nothing is
                    // written here, so look before acting for it elsewhere.
                    if self.accounts.signature_key(caller).await?.is_none() {
                        return Err(ServiceError::Store(StoreError::ActorRemoved));
                    }
                    let hub = hub.as_str();
                    let relayed = FederationRequest::RelayGroupRequest(RelayedGroupRequest {
                        sender: caller.clone(),
                        request,
                    });
                    return match self.federated(hub, relayed).await? {
                        FederationResponseBody::GroupResponse(body) => Ok(body),
                        other => Err(unexpected_peer_answer(&other)),
                    };
                }
            }
        }
        self.group_request(caller, request).await
    }

    /// A group operation on a group hosted here, for `sender` (local, or relayed by its server).
    pub(super) async fn group_request(
        &self,
        sender: &ClientId,
        request: GroupRequest,
    ) -> Result<ResponseBody, ServiceError> {
        Ok(match request {
            GroupRequest::SendCommit(request) => {
                ResponseBody::CommitAccepted(self.groups.commit(sender, request).await?)
            }
            GroupRequest::SendMessage(request) => {
                ResponseBody::MessageAccepted(self.groups.send(sender, request).await?)
            }
            GroupRequest::GetGroup(request) => {
                ResponseBody::Group(self.groups.get(sender, request.group_id.as_slice()).await?)
            }
            GroupRequest::ListGroups => ResponseBody::Groups(GroupList {
                groups: self.groups.list(sender).await?,
                unreachable_hubs: Vec::new(),
            }),
            GroupRequest::ListUserGroups => ResponseBody::Groups(GroupList {
                groups: self.groups.list_of_user(sender).await?,
                unreachable_hubs: Vec::new(),
            }),
            GroupRequest::SendProposal(request) => {
                self.groups.propose(sender, request).await?;
                ResponseBody::ProposalAccepted
            }
            GroupRequest::DeleteGroup(request) => {
                self.groups.delete(sender, request).await?;
                ResponseBody::GroupDeleted
            }
            GroupRequest::FetchGroupTree(request) => {
                ResponseBody::GroupTree(self.groups.tree(sender, &request).await?)
            }
        })
    }

    /// The groups `caller` is a member of (`ListGroups`), or that any client of its user is
    /// (`ListUserGroups`): those hosted here, and those hosted by the peers that deliver groups
    /// to this server's clients, asked all at once. A hub that cannot be asked is named in the
    /// answer instead of failing it.
    pub(super) async fn list_groups(
        &self,
        caller: &ClientId,
        which: GroupRequest,
    ) -> Result<GroupList, ServiceError> {
        let here = match which {
            GroupRequest::ListUserGroups => self.groups.list_of_user(caller).await?,
            _ => self.groups.list(caller).await?,
        };
        let mut list = GroupList {
            groups: here,
            unreachable_hubs: Vec::new(),
        };
        if self.federation.is_none() {
            return Ok(list);
        }
        let hubs = self.store.group_hubs().await?;
        let answers = futures::future::join_all(hubs.iter().map(|hub| {
            let relayed = FederationRequest::RelayGroupRequest(RelayedGroupRequest {
                sender: caller.clone(),
                request: which.clone(),
            });
            self.federated(hub, relayed)
        }))
        .await;
        for (hub, answer) in hubs.iter().map(String::as_str).zip(answers) {
            match answer {
                Ok(FederationResponseBody::GroupResponse(ResponseBody::Groups(hosted))) => {
                    // A peer speaks only for the groups it hosts: those whose id names it.
                    list.groups
                        .extend(hosted.groups.into_iter().filter(|group| {
                            crate::identity::group_hub(group.group_id.as_slice())
                                .is_some_and(|named| named.as_str() == hub)
                        }));
                }
                Ok(other) => {
                    tracing::warn!(%hub, error = %crate::escape::Escaped(unexpected_peer_answer(&other)), "cannot list a hub's groups");
                    list.unreachable_hubs.push(Text::truncated(hub));
                }
                Err(e) => {
                    tracing::warn!(%hub, error = %crate::escape::Escaped(&e), "cannot list a hub's groups");
                    list.unreachable_hubs.push(Text::truncated(hub));
                }
            }
        }
        Ok(list)
    }

    /// The hubs that welcomed any of `clients` into their groups (read before the clients go:
    /// their records go with them).
    pub(super) async fn hubs_of(&self, clients: &[ClientId]) -> Vec<String> {
        let mut hubs = std::collections::BTreeSet::new();
        for client in clients {
            match self.store.client_hubs(client).await {
                Ok(found) => hubs.extend(found),
                Err(e) => tracing::warn!(error = %e, "cannot read a client's hubs"),
            }
        }
        hubs.into_iter().collect()
    }

    /// Tells the peers in `hubs` (those hosting groups of `clients`) that `clients` are gone, so
    /// they propose their removal. Best effort: an unreachable hub is logged.
    pub(super) async fn tell_hubs_of_departures(&self, hubs: Vec<String>, clients: Vec<ClientId>) {
        let Some(federation) = &self.federation else {
            return;
        };
        let request = FederationRequest::ClientsDeparted(ClientsDepartedRequest { clients });
        for hub in hubs {
            if let Err(e) = federation.request(&hub, &request).await {
                tracing::warn!(%hub, error = %crate::escape::Escaped(&e), "cannot tell a group hub of departed clients");
            }
        }
    }

    /// `Some(domain)` for a user of another homeserver, `None` for one of ours.
    pub(super) fn remote_user(&self, user_id: &str) -> Result<Option<String>, ServiceError> {
        let user: crate::identity::UserId = user_id.parse().map_err(ServiceError::InvalidUserId)?;
        Ok((user.domain() != self.domain.as_str()).then(|| user.domain().to_owned()))
    }

    pub(super) async fn federated(
        &self,
        domain: &str,
        request: FederationRequest,
    ) -> Result<FederationResponseBody, ServiceError> {
        match &self.federation {
            Some(federation) if federation.knows(domain) => {
                federation.request(domain, &request).await
            }
            _ => Err(ServiceError::UnknownDomain(domain.to_owned())),
        }
    }
}

/// The group a group operation is about (from its MLS framing, or its group id field).
fn request_group_id(request: &GroupRequest) -> Option<Vec<u8>> {
    use openmls::prelude::{MlsMessageBodyIn, MlsMessageIn, ProtocolMessage};
    use tls_codec::Deserialize;
    let from_message = |bytes: &[u8]| -> Option<Vec<u8>> {
        let message: ProtocolMessage =
            match MlsMessageIn::tls_deserialize_exact(bytes).ok()?.extract() {
                MlsMessageBodyIn::PublicMessage(message) => message.into(),
                MlsMessageBodyIn::PrivateMessage(message) => message.into(),
                _ => return None,
            };
        Some(message.group_id().as_slice().to_vec())
    };
    match request {
        GroupRequest::SendCommit(request) => from_message(request.commit.as_slice()),
        GroupRequest::SendMessage(request) => from_message(request.message.as_slice()),
        GroupRequest::SendProposal(request) => from_message(request.proposal.as_slice()),
        GroupRequest::GetGroup(request) => Some(request.group_id.as_slice().to_vec()),
        GroupRequest::DeleteGroup(request) => Some(request.group_id.as_slice().to_vec()),
        GroupRequest::FetchGroupTree(request) => Some(request.group_id.as_slice().to_vec()),
        GroupRequest::ListGroups | GroupRequest::ListUserGroups => None,
    }
}

/// Checks that `client` is one `peer` may speak for: a well-formed user id in canonical form
/// (`InvalidUserId` if not) of the peer's own domain (`PeerRefused` if another).
fn check_peer_speaks_for(peer: &str, client: &ClientId) -> Result<(), ServiceError> {
    let user = crate::identity::UserId::parse_canonical(client.user_id.as_str())
        .map_err(ServiceError::InvalidUserId)?;
    if user.domain() != peer {
        return Err(ServiceError::PeerRefused(format!(
            "{peer} cannot speak for {client}"
        )));
    }
    Ok(())
}

pub(super) fn unexpected_peer_answer(answer: &FederationResponseBody) -> ServiceError {
    ServiceError::PeerUnavailable(format!("the peer answered {answer:?}"))
}
