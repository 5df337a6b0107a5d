//! `remove`: removes every device of a user from a group (Admins only).

use super::{change_membership, Context, MembershipChange};
use crate::output::Output;

pub async fn run(context: &Context<'_>, group: &str, user: &str) -> anyhow::Result<Output> {
    change_membership(context, group, MembershipChange::Remove { user }).await
}
