//! `members`: a group's members with their roles.

use serde_json::json;

use super::Context;
use crate::output::{role_name, Output};

pub async fn run(context: &Context<'_>, group: &str) -> anyhow::Result<Output> {
    let _session = context.authenticate().await?;
    let group_id = context.group_id(group)?;
    let state = context.connection.get_group(&group_id).await?;
    let members: Vec<_> = state
        .members
        .iter()
        .map(|member| {
            json!({
                "client_id": member.client.to_string(),
                "leaf_index": member.leaf_index,
                "role": role_name(member.role),
            })
        })
        .collect();
    let mut text = format!("group {} at epoch {}:", hex::encode(&group_id), state.epoch);
    for member in &state.members {
        text.push_str(&format!(
            "\n  {} ({})",
            member.client,
            role_name(member.role)
        ));
    }
    Ok(Output::new(
        json!({ "group": hex::encode(&group_id), "epoch": state.epoch, "members": members }),
        text,
    ))
}
