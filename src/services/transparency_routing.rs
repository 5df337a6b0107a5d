//! Transparency questions routed: about this server's log, answered by [`Transparency`]; about
//! another domain's, relayed to its homeserver (`FederationRequest::Transparency`), whose answer
//! the client verifies against that domain's keys (this server only carries it).

use crate::protocol::{
    FederationRequest, FederationResponseBody, FetchHistoryRequest, GetTreeHeadRequest,
    ProveBindingsRequest, ProveConsistencyRequest, ResponseBody, TransparencyQuery,
    MAX_HISTORY_ENTRIES,
};

use super::{ServiceError, Services, Transparency};

impl Services {
    /// A client's question about a domain's log: ours, or relayed.
    pub(super) async fn transparency_query(
        &self,
        query: TransparencyQuery,
    ) -> Result<ResponseBody, ServiceError> {
        let domain = match &query {
            TransparencyQuery::GetTreeHead(request) => request.domain.as_str().to_ascii_lowercase(),
            TransparencyQuery::ProveConsistency(request) => {
                request.domain.as_str().to_ascii_lowercase()
            }
            TransparencyQuery::ProveBindings(ProveBindingsRequest { user_id })
            | TransparencyQuery::FetchHistory(FetchHistoryRequest { user_id, .. }) => {
                match self.remote_user(user_id.as_str())? {
                    Some(domain) => domain,
                    None => self.domain.as_str().to_owned(),
                }
            }
        };
        if domain == self.domain.as_str() {
            return answer(&self.transparency, query).await;
        }
        let expected = query_operation(&query);
        match self
            .federated(&domain, FederationRequest::Transparency(query))
            .await?
        {
            FederationResponseBody::Transparency(body)
                if body_operation(&body) == Some(expected) =>
            {
                Ok(body)
            }
            other => Err(super::routing::unexpected_peer_answer(&other)),
        }
    }

    /// A peer's question about our log.
    pub(super) async fn peer_transparency_query(
        &self,
        query: TransparencyQuery,
    ) -> Result<FederationResponseBody, ServiceError> {
        let ours = match &query {
            TransparencyQuery::GetTreeHead(GetTreeHeadRequest { domain })
            | TransparencyQuery::ProveConsistency(ProveConsistencyRequest { domain, .. }) => {
                domain.as_str().eq_ignore_ascii_case(self.domain.as_str())
            }
            TransparencyQuery::ProveBindings(ProveBindingsRequest { user_id })
            | TransparencyQuery::FetchHistory(FetchHistoryRequest { user_id, .. }) => {
                self.remote_user(user_id.as_str())?.is_none()
            }
        };
        if !ours {
            // A homeserver answers for its own log only: no relaying on.
            return Err(ServiceError::UnknownDomain(format!("{query:?}")));
        }
        Ok(FederationResponseBody::Transparency(
            answer(&self.transparency, query).await?,
        ))
    }
}

/// Answers a question about this server's own log.
async fn answer(
    transparency: &Transparency,
    query: TransparencyQuery,
) -> Result<ResponseBody, ServiceError> {
    Ok(match query {
        TransparencyQuery::GetTreeHead(_) => {
            ResponseBody::TreeHead(Box::new(transparency.newest().await?.0))
        }
        TransparencyQuery::ProveBindings(request) => {
            let proof = transparency
                .prove_bindings(request.user_id.as_str())
                .await?;
            ResponseBody::Bindings(Box::new(proof))
        }
        TransparencyQuery::FetchHistory(request) => {
            let history = transparency
                .history(request.user_id.as_str(), request.from, MAX_HISTORY_ENTRIES)
                .await?;
            ResponseBody::History(Box::new(history))
        }
        TransparencyQuery::ProveConsistency(request) => ResponseBody::Consistency(
            transparency
                .prove_consistency(request.old_size, request.new_size)
                .await?,
        ),
    })
}

/// The client operation code of a query, which its answer's body carries.
fn query_operation(query: &TransparencyQuery) -> u16 {
    match query {
        TransparencyQuery::GetTreeHead(_) => 34,
        TransparencyQuery::ProveBindings(_) => 35,
        TransparencyQuery::ProveConsistency(_) => 36,
        TransparencyQuery::FetchHistory(_) => 37,
    }
}

fn body_operation(body: &ResponseBody) -> Option<u16> {
    match body {
        ResponseBody::TreeHead(_) => Some(34),
        ResponseBody::Bindings(_) => Some(35),
        ResponseBody::Consistency(_) => Some(36),
        ResponseBody::History(_) => Some(37),
        _ => None,
    }
}
