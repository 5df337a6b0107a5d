//! `groups`: the groups this device is in, with their local names.

use serde_json::json;

use super::Context;
use crate::device::GroupNames;
use crate::output::Output;

pub async fn run(context: &Context<'_>) -> anyhow::Result<Output> {
    let _session = context.authenticate().await?;
    let names = GroupNames::load(&context.cli.state)?;
    let listed = context.connection.list_groups().await?;
    let groups: Vec<_> = listed
        .groups
        .iter()
        .map(|group| {
            let id = hex::encode(group.group_id.as_slice());
            json!({ "group": id, "name": names.name_of(&id), "epoch": group.epoch })
        })
        .collect();
    let unreachable: Vec<&str> = listed
        .unreachable_hubs
        .iter()
        .map(|hub| hub.as_str())
        .collect();
    let text = listed
        .groups
        .iter()
        .map(|group| {
            let id = hex::encode(group.group_id.as_slice());
            match names.name_of(&id) {
                Some(name) => format!("{id} ({name}), epoch {}", group.epoch),
                None => format!("{id}, epoch {}", group.epoch),
            }
        })
        .chain(
            unreachable
                .iter()
                .map(|hub| format!("({hub} could not be reached: its groups are not listed)")),
        )
        .collect::<Vec<_>>()
        .join("\n");
    let text = if text.is_empty() {
        "no groups".to_owned()
    } else {
        text
    };
    Ok(Output::new(
        json!({ "groups": groups, "unreachable_hubs": unreachable }),
        text,
    ))
}
